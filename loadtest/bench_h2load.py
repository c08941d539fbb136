"""The load harness of issue 6: h2load (Debian's nghttp2-client) sends prebuilt gRPC frames to a real
`medsettle serve --workers N` (Redis with AOF everysec), and this reports, for each RPC next to the no-op
Ping on the same server in the same run: maximum throughput (closed loop), p50/p99/p99.9 at a fixed
offered load (open loop, h2load timing script), and gateway CPU µs per call.

    .venv/bin/python -m loadtest.bench_h2load [--seconds 8] [--rate 1000] [--workers 2]

h2load repeats one request body, so it measures the RPCs a resend cannot change: Ping, QueryEligibility
and PreSettle (which computes the whole split: everything Settle does but the commit). Settle needs a
new message id per call, so its figures come from loadtest.bench_gateway's Python client (several
processes), with its own Ping beside it for the ratio. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.protos import pb
from loadtest.stack import running_stack
from loadtest.synthetic import INPATIENT_LINES, OUTPATIENT_10_LINES, PHARMACY_LINES

SERVICE = "medsettle.v1.SettlementService"


def frame(message: Any) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def sixty_lines() -> list[tuple[str, int, int]]:
    base = [*OUTPATIENT_10_LINES, *INPATIENT_LINES]
    return [base[i % len(base)] for i in range(60)]


def requests() -> dict[str, tuple[str, bytes]]:
    env = pb.Envelope(institution_code="H50010300001", terminal_id="H2", message_id="H2LOAD0001")
    person = pb.PersonRef(card_no="L00000007")

    def bill(visit: int, lines: list[tuple[str, int, int]]) -> Any:
        return pb.Bill(
            visit_type=visit, lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in lines]
        )

    pharmacy_env = pb.Envelope(institution_code="P50010300001", terminal_id="H2", message_id="H2LOAD0002")
    return {
        "no-op Ping": ("medsettle.v1.DiagnosticsService/Ping", frame(pb.PingRequest())),
        "QueryEligibility": (
            f"{SERVICE}/QueryEligibility",
            frame(pb.QueryEligibilityRequest(envelope=env, person=person)),
        ),
        "PreSettle 10-line outpatient": (
            f"{SERVICE}/PreSettle",
            frame(
                pb.SettleRequest(
                    envelope=env, person=person, bill=bill(pb.VISIT_TYPE_OUTPATIENT, OUTPATIENT_10_LINES)
                )
            ),
        ),
        "PreSettle 60-line inpatient": (
            f"{SERVICE}/PreSettle",
            frame(
                pb.SettleRequest(
                    envelope=env, person=person, bill=bill(pb.VISIT_TYPE_INPATIENT, sixty_lines())
                )
            ),
        ),
        "PreSettle pharmacy": (
            f"{SERVICE}/PreSettle",
            frame(
                pb.SettleRequest(
                    envelope=pharmacy_env, person=person, bill=bill(pb.VISIT_TYPE_PHARMACY, PHARMACY_LINES)
                )
            ),
        ),
    }


H2_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def h2load_max(port: int, path: str, data: Path, seconds: float) -> float:
    out = subprocess.run(
        [
            "h2load",
            "-c",
            "8",
            "-m",
            "16",
            "-D",
            str(int(seconds)),
            "--warm-up-time",
            "1",
            *H2_HEADERS,
            "-d",
            str(data),
            f"http://127.0.0.1:{port}/{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if not re.search(r"requests: \d+ total, \d+ started, (\d+) done, \1 succeeded", out):
        raise RuntimeError(f"h2load saw failures:\n{out}")
    return float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]


def h2load_at_rate(port: int, path: str, data: Path, seconds: float, rate: float, tmp: Path) -> list[float]:
    """Open loop: 4 clients, each with a timing script of requests spaced 4/rate apart."""
    clients = 4
    gap_ms = 1000 * clients / rate
    script = tmp / "timing.txt"
    script.write_text(
        "".join(
            f"{i * gap_ms:.3f}\thttp://127.0.0.1:{port}/{path}\n"
            for i in range(int(seconds * rate / clients))
        )
    )
    log = tmp / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends: each RPC gets a fresh log
    subprocess.run(
        [
            "h2load",
            "-c",
            str(clients),
            "-m",
            "64",
            *H2_HEADERS,
            "-d",
            str(data),
            "--timing-script-file",
            str(script),
            "--log-file",
            str(log),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line.strip())


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def children_cpu(parent: int) -> float:
    total = 0.0
    for pid in Path("/proc").iterdir():
        if not pid.name.isdigit():
            continue
        try:
            stat = (pid / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == parent:  # ppid
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load is not installed: apt-get install nghttp2-client")
    with running_stack(2000, args.workers) as stack:
        port, server, tmp = stack.port, stack.server, stack.tmp
        results = []
        for name, (path, body) in requests().items():
            data = tmp / "body.bin"
            data.write_bytes(body)
            cpu0 = children_cpu(server.pid)
            top = h2load_max(port, path, data, args.seconds)
            cpu_us = (children_cpu(server.pid) - cpu0) / (top * (args.seconds + 1)) * 1e6
            lat = h2load_at_rate(port, path, data, min(args.seconds, 5), args.rate, tmp)
            results.append((name, top, cpu_us, lat))
    floor = results[0][1]
    print(
        f"machine: {os.cpu_count()} cores; gateway processes: {args.workers}; AOF everysec; h2load -c 8 -m 16"
    )
    head = f"{'rpc':<30}{'max/s':>8}{'vs no-op':>10}{'CPU µs':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>10}"
    print(head + "  at /s")
    for name, top, cpu, lat in results:
        print(
            f"{name:<30}{top:>8.0f}{top / floor:>10.2f}{cpu:>8.0f}{percentile(lat, 0.5):>8.2f}"
            f"{percentile(lat, 0.99):>8.2f}{percentile(lat, 0.999):>10.2f}  {args.rate:.0f}"
        )


if __name__ == "__main__":
    main()
