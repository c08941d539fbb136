"""What TLS costs per call: Ping and a 10-line Settle against the same gateway build served plaintext
(--insecure) and over mutual TLS, in the same run, against one redis-server; plus what a new connection
costs (TCP, or TCP + TLS 1.3 handshake with client certificate).

    .venv/bin/python -m loadtest.bench_tls [--seconds 5] [--rounds 2] [--workers 1] [--rate 300]

Each gateway is `medsettle serve --workers N` (1 by default) with the per-institution limits lifted
(loadtest/stack.py LOAD_LIMITS); the client is this process's grpc.aio on the same machine, so the
client's CPU is part of every figure. Server CPU per call is from /proc (user + system of the gateway
processes). Prints figures; asserts nothing. Plaintext and mTLS alternate in each round so a drift of a
shared machine hits both alike: believe the differences over several rounds, not one figure."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from adapters.embedded_redis import EmbeddedRedis
from gateway.edge.tls import ClientTls, channel
from gateway.protos import pb, pb_grpc
from loadtest import proc_cpu
from loadtest.bench_gateway import closed_loop, open_loop, percentile, settle_requests
from loadtest.stack import CITYDATA, CLI, limit_flags, secret_env
from loadtest.synthetic import write_persons

HOSPITAL = "H50010300001"


def start(
    env: dict[str, str], data_dir: Path, insecure: bool, workers: int
) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--workers", str(workers), "--log-level", "WARNING",
         "--metrics-port", "-1", "--data-dir", str(data_dir), *limit_flags(),
         *(["--insecure"] if insecure else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            return proc, int(match.group(1))
    raise RuntimeError("gateway did not start")


async def connections_per_s(target: str, tls: ClientTls | None, seconds: float) -> float:
    """New channels, each connected and used for one Ping, one after the other."""
    done = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        async with channel(target, tls) as ch:
            await pb_grpc.DiagnosticsServiceStub(ch).Ping(pb.PingRequest(), timeout=5)
        done += 1
    return done / (time.perf_counter() - started)


async def measure(
    name: str,
    proc: subprocess.Popen[str],
    port: int,
    tls: ClientTls | None,
    args: argparse.Namespace,
    run: str,
) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    async with channel(target, tls) as ch:
        await ch.channel_ready()
        settle = pb_grpc.SettlementServiceStub(ch).Settle
        ping = pb_grpc.DiagnosticsServiceStub(ch).Ping
        pings = itertools.repeat(pb.PingRequest())
        requests = settle_requests(args.persons, 10_000_000, run)
        await closed_loop(settle, requests, 1.5, args.concurrency)  # warm: card cache, parsed persons
        cpu0 = proc_cpu.children_cpu_seconds(proc.pid)
        ping_max = await closed_loop(ping, pings, args.seconds, args.concurrency)
        cpu1 = proc_cpu.children_cpu_seconds(proc.pid)
        settle_max = await closed_loop(settle, requests, args.seconds, args.concurrency)
        cpu2 = proc_cpu.children_cpu_seconds(proc.pid)
        ping_lat = await open_loop(ping, pings, args.seconds / 2, args.rate)
        settle_lat = await open_loop(settle, requests, args.seconds / 2, args.rate)
    conns = await connections_per_s(target, tls, min(3.0, args.seconds))
    return {
        "name": name, "ping": ping_max, "settle": settle_max,
        "ping_cpu_us": (cpu1 - cpu0) / (ping_max * args.seconds) * 1e6,
        "settle_cpu_us": (cpu2 - cpu1) / (settle_max * args.seconds) * 1e6,
        "ping_p50": percentile(ping_lat, 0.5), "ping_p99": percentile(ping_lat, 0.99),
        "settle_p50": percentile(settle_lat, 0.5), "settle_p99": percentile(settle_lat, 0.99),
        "connections": conns,
    }  # fmt: skip


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        env = {**os.environ, **secret_env(server.url)}
        subprocess.run([*CLI, "load", "--dir", str(CITYDATA)], check=True, stdout=subprocess.DEVNULL, env=env)
        people = write_persons(Path(tmp) / "persons.json", args.persons)
        subprocess.run(
            [*CLI, "load", "--persons", str(people)], check=True, stdout=subprocess.DEVNULL, env=env
        )
        results = []
        for round_no in range(args.rounds):  # alternate, so a drift of the machine hits both alike
            for insecure in (True, False):
                data = Path(tmp) / ("plain" if insecure else "tls")
                proc, port = start(env, data, insecure, args.workers)
                try:
                    tls = None if insecure else ClientTls.for_institution(data / "certs", HOSPITAL)
                    name = "plaintext" if insecure else "mTLS"
                    results.append(await measure(name, proc, port, tls, args, f"{name[:2]}{round_no}"))
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
        return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=float, default=300.0, help="offered load for the latency runs, calls/s"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="gateway processes")
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    machine = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    print(f"machine: {machine}, Python {platform.python_version()}, grpcio {grpc.__version__};"
          f" {args.workers} gateway processes")  # fmt: skip
    print(f"{'transport':<11}{'rpc':<8}{'max calls/s':>12}{'server CPU µs':>15}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'@ offered/s':>13}")  # fmt: skip
    for r in results:
        for rpc in ("ping", "settle"):
            print(f"{r['name']:<11}{rpc:<8}{r[rpc]:>12.0f}{r[rpc + '_cpu_us']:>15.0f}{r[rpc + '_p50']:>9.2f}"
                  f"{r[rpc + '_p99']:>9.2f}{args.rate:>13.0f}")  # fmt: skip
        print(f"{r['name']:<11}{'connect':<8}{r['connections']:>12.0f}  new connections/s (one Ping each)")
    plain = [r for r in results if r["name"] == "plaintext"]
    secure = [r for r in results if r["name"] == "mTLS"]
    for rpc in ("ping", "settle"):
        p = sum(r[rpc + "_cpu_us"] for r in plain) / len(plain)
        s = sum(r[rpc + "_cpu_us"] for r in secure) / len(secure)
        print(f"mTLS costs {s - p:+.0f} µs of server CPU per {rpc} ({s / p:.2f}x)")


if __name__ == "__main__":
    main()
