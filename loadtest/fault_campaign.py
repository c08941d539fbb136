"""The fault campaign: steady settle load from retrying terminals while the posting worker, redis-server
and gateway processes are SIGKILLed again and again, and Redis is once wiped and rebuilt from the
ledger; then the auditor, and a count of what the terminals were told against what the ledger holds.

The system: `medsettle serve` (mTLS, its gateway processes restarted by it when killed), a redis-server
with AOF `appendfsync always` that the campaign kills and starts again, and `medsettle worker` into a
SQLite ledger, killed and started again by the campaign. Terminals resend the same request (same
message id, same bill) after any answer that leaves the outcome unknown, as an HIS must; one settlement
in ten is then reversed the same way. The wipe: new requests pause, retries finish, posting drains,
Redis is killed and its data deleted, the static data loaded and `medsettle rebuild` run, load resumes.

Passes when the auditor finds no difference, every acknowledged settlement and reversal is in the
ledger exactly once, and nothing was booked that no terminal was told about.

    .venv/bin/python -m loadtest.fault_campaign [--minutes 10] [--worker-kills 60] [--redis-kills 12]
        [--gateway-kills 12] [--terminals 8]

Prints the figures (kills, acknowledged, lost, doubled, recovery times) and exits 1 on any failure."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.edge.tls import ClientTls, channel
from gateway.posting.deadletters import HELD
from gateway.protos import pb, pb_grpc
from loadtest.stack import CITYDATA, CLI, limit_flags, ready_port, secret_env
from loadtest.synthetic import OUTPATIENT_10_LINES, write_persons

HOSPITAL = "H50010300001"
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
}  # fmt: skip
CALL_TIMEOUT_S = 3.0
RETRY_PAUSE_S = 0.2
DRAIN_TIMEOUT_S = 120.0


@dataclass
class Figures:
    kills: Counter[str] = field(default_factory=Counter)
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # message id -> settlement id
    reversed: dict[str, str] = field(default_factory=dict)  # settlement id -> reversal message id
    retries: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # business answers, by reason
    unknown_or_internal: int = 0  # answers a terminal must never get
    ack_times: list[float] = field(default_factory=list)
    wipe_s: float = 0.0
    rebuilt: str = ""


class System:
    """redis-server, serve and the worker, each killable and restartable."""

    def __init__(self, tmp: Path, persons: int, gateways: int) -> None:
        self.tmp = tmp
        self.redis = EmbeddedRedis(tmp)
        self.ledger_dsn = f"sqlite:///{tmp / 'ledger.db'}"
        self.persons_file = tmp / "persons.json"
        self.persons, self.gateways = persons, gateways
        self.serve: subprocess.Popen[str] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.env: dict[str, str] = {}

    def start(self) -> None:
        self.redis.start()
        self.env = {**os.environ, **secret_env(self.redis.url), "MEDSETTLE_LEDGER_DSN": self.ledger_dsn}
        self.load_static()
        write_persons(self.persons_file, self.persons)
        subprocess.run([*CLI, "load", "--persons", str(self.persons_file)], check=True, capture_output=True,
                       env=self.env)  # fmt: skip
        self.serve = subprocess.Popen(
            [*CLI, "serve", "--listen", "127.0.0.1:0", "--workers", str(self.gateways),
             "--metrics-port", "-1", "--log-level", "WARNING", "--data-dir", str(self.tmp / "serve"),
             *limit_flags()],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
        )  # fmt: skip
        self.port = ready_port(self.serve)
        self.start_worker()

    def load_static(self) -> None:
        subprocess.run([*CLI, "load", "--dir", str(CITYDATA)], check=True, capture_output=True, env=self.env)

    def tls(self) -> ClientTls:
        return ClientTls.for_institution(self.tmp / "serve" / "certs", HOSPITAL)

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [*CLI, "worker", "--metrics-port", "-1", "--consumer", "campaign"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
        )  # fmt: skip

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.start_worker()

    def kill_redis(self, pause_s: float = 0.5) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGKILL)
        self.redis.process.wait()
        time.sleep(pause_s)
        self.redis.start()

    def gateway_pids(self) -> list[int]:
        assert self.serve is not None
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.serve.pid and b"gateway-process" in cmdline:
                out.append(int(entry.name))
        return out

    def kill_gateway(self) -> None:
        pids = self.gateway_pids()
        if pids:
            os.kill(random.choice(pids), signal.SIGKILL)

    def backlog(self) -> int:
        r = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        pipe = r.pipeline(transaction=False)
        for p in range(keys.PARTITIONS):
            pipe.xlen(keys.stream_key(p))
        pipe.zcard(HELD)
        return int(sum(pipe.execute()))

    def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.backlog():
            if time.monotonic() > deadline:
                raise RuntimeError(f"posting did not drain within {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def wipe_and_rebuild(self) -> str:
        """Redis lost whole: killed, its data deleted, the static data loaded, the persons rebuilt."""
        self.drain()
        assert self.worker is not None and self.redis.process is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.redis.process.send_signal(signal.SIGKILL)
        self.redis.process.wait()
        shutil.rmtree(self.redis.dir)
        self.redis.start()
        self.load_static()
        done = subprocess.run(
            [*CLI, "rebuild", "--persons", str(self.persons_file), "--data-dir", str(self.tmp / "serve")],
            capture_output=True, text=True, env=self.env, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rebuild failed: {done.stdout}{done.stderr}")
        self.start_worker()
        return done.stdout.strip().splitlines()[0]

    def stop(self) -> None:
        for proc in (self.serve, self.worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.redis.stop()


async def answered(call: Any, request: Any, figures: Figures) -> Any | None:
    """The answer to a request, resent as it is after any outcome-unknown answer; None: rejected."""
    while True:
        try:
            return await call(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                figures.unknown_or_internal += 1
            if exc.code() in RETRYABLE:
                figures.retries += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            figures.rejected[reason_of(exc)] += 1
            return None


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    """The rejection's reason (ErrorInfo), else its status code."""
    status = rpc_status.from_call(exc)
    info = error_details_pb2.ErrorInfo()
    if status is not None and status.details and status.details[0].Unpack(info):
        return str(info.reason)
    return str(exc.code().name)


async def terminal(
    n: int, system: System, persons: int, figures: Figures, running: asyncio.Event, stop: asyncio.Event,
    in_flight: list[int],
) -> None:  # fmt: skip
    bill = pb.Bill(
        visit_type=pb.VISIT_TYPE_OUTPATIENT,
        lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in OUTPATIENT_10_LINES],
    )
    run = f"FC{os.getpid() % 1000:03d}T{n:02d}"
    i = 0
    async with channel(f"127.0.0.1:{system.port}", system.tls()) as ch:
        stub = pb_grpc.SettlementServiceStub(ch)
        while not stop.is_set():
            await running.wait()
            if stop.is_set():
                break
            i += 1
            in_flight[0] += 1
            try:
                message_id = f"{run}{i:08d}"
                request = pb.SettleRequest(
                    envelope=pb.Envelope(institution_code=HOSPITAL, terminal_id="T1", message_id=message_id),
                    person=pb.PersonRef(card_no=f"L{(n * 7919 + i) % persons:08d}"),
                    bill=bill,
                )
                settled = await answered(stub.Settle, request, figures)
                if settled is None:
                    continue
                figures.acked[message_id] = settled.settlement_id
                figures.ack_times.append(time.monotonic())
                if i % 10 == 0:
                    reverse = pb.ReverseRequest(
                        envelope=pb.Envelope(institution_code=HOSPITAL, terminal_id="T1",
                                             message_id=f"{run}R{i:07d}"),
                        settlement_id=settled.settlement_id,
                    )  # fmt: skip
                    if await answered(stub.Reverse, reverse, figures) is not None:
                        figures.reversed[settled.settlement_id] = reverse.envelope.message_id
            finally:
                in_flight[0] -= 1


def schedule(
    seconds: float, worker: int, redis_kills: int, gateway: int, wipe: bool
) -> list[tuple[float, str]]:
    """Faults spread over the run (the first and last tenth quiet), the wipe at 60 %."""
    events: list[tuple[float, str]] = []
    for kind, count in (("worker", worker), ("redis", redis_kills), ("gateway", gateway)):
        for k in range(count):
            events.append((seconds * (0.1 + 0.8 * (k + random.random() * 0.5) / max(count, 1)), kind))
    if wipe:
        events.append((seconds * 0.6, "wipe"))
    return sorted(events)


async def campaign(args: argparse.Namespace, tmp: Path) -> tuple[Figures, list[str], str]:
    system = System(tmp, args.persons, args.gateways)
    figures = Figures()
    await asyncio.to_thread(system.start)
    running, stop = asyncio.Event(), asyncio.Event()
    running.set()
    in_flight = [0]
    terminals = [
        asyncio.create_task(terminal(n, system, args.persons, figures, running, stop, in_flight))
        for n in range(args.terminals)
    ]
    started = time.monotonic()
    try:
        plan = schedule(args.seconds, args.worker_kills, args.redis_kills, args.gateway_kills, args.wipe)
        for at, kind in plan:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            killed_at = time.monotonic()
            if kind == "wipe":
                running.clear()
                while in_flight[0]:
                    await asyncio.sleep(0.05)
                figures.rebuilt = await asyncio.to_thread(system.wipe_and_rebuild)
                figures.wipe_s = time.monotonic() - killed_at
                running.set()
            else:
                await asyncio.to_thread({"worker": system.kill_worker, "redis": system.kill_redis,
                                         "gateway": system.kill_gateway}[kind])  # fmt: skip
            figures.kills[kind] += 1
            asyncio.get_running_loop().call_later(
                10.0, record_recovery, figures, kind, killed_at if kind != "wipe" else time.monotonic()
            )
        await asyncio.sleep(max(0.0, started + args.seconds - time.monotonic()))
    finally:
        stop.set()
        running.set()
        await asyncio.gather(*terminals, return_exceptions=True)
    await asyncio.to_thread(system.drain)
    audited = subprocess.run(
        [*CLI, "audit", "--redis", system.redis.url, "--ledger", system.ledger_dsn],
        capture_output=True, text=True, env=system.env, timeout=1200,
    )  # fmt: skip
    problems = check_ledger(system.ledger_dsn, figures)
    if audited.returncode != 0:
        problems.append(
            f"the auditor exited {audited.returncode}:\n{audited.stdout[-3000:]}{audited.stderr[-3000:]}"
        )
    await asyncio.to_thread(system.stop)
    return figures, problems, audited.stdout.strip().splitlines()[0] if audited.stdout else ""


def record_recovery(figures: Figures, kind: str, since: float) -> None:
    after = [t - since for t in figures.ack_times if t > since]
    if after:
        figures.recovery_s.setdefault(kind, []).append(min(after))


def check_ledger(dsn: str, figures: Figures) -> list[str]:
    """Nothing lost, nothing doubled, nothing booked unannounced."""
    ledger = Ledger(dsn)
    try:
        rows = ledger.query("SELECT message_id, settlement_id, kind FROM journal WHERE message_id LIKE 'FC%'")
    finally:
        ledger.close()
    settles: dict[str, list[str]] = {}
    reverses: set[str] = set()
    for message_id, sid, kind in rows:
        if kind == "settle":
            settles.setdefault(str(message_id), []).append(str(sid))
        elif kind == "reverse":
            reverses.add(str(sid))
    problems = []
    lost = [m for m, sid in figures.acked.items() if settles.get(m) != [sid]]
    doubled = [m for m, sids in settles.items() if len(sids) > 1]
    unannounced = [m for m in settles if m not in figures.acked]
    unreversed = [sid for sid in figures.reversed if sid not in reverses]
    for what, found in (("lost", lost), ("doubled", doubled), ("booked but never acknowledged", unannounced),
                        ("acknowledged reversals not booked", unreversed)):  # fmt: skip
        if found:
            problems.append(f"{len(found)} {what}: {found[:5]}")
    if figures.unknown_or_internal:
        problems.append(f"{figures.unknown_or_internal} answers of UNKNOWN or INTERNAL")
    return problems


def report(figures: Figures, problems: list[str], audit_line: str, elapsed: float) -> str:
    lines = [
        f"fault campaign: {elapsed:.0f} s",
        "kills: " + ", ".join(f"{kind} {n}" for kind, n in sorted(figures.kills.items())),
        f"acknowledged: {len(figures.acked)} settlements, {len(figures.reversed)} reversals;"
        f" resends after an unknown outcome: {figures.retries};"
        f" business rejections: {dict(figures.rejected)}",
    ]
    for kind, times in sorted(figures.recovery_s.items()):
        lines.append(
            f"recovery after {kind} (first acknowledged settlement after the fault): median"
            f" {statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)}"
        )
    if figures.rebuilt:
        lines.append(f"wipe and rebuild: {figures.wipe_s:.1f} s with new requests paused; {figures.rebuilt}")
    lines.append(f"audit: {audit_line}")
    verdict = "lost 0, doubled 0, unannounced 0" if not problems else "FAILED:\n  " + "\n  ".join(problems)
    lines.append(verdict)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--worker-kills", type=int, default=60)
    parser.add_argument("--redis-kills", type=int, default=12)
    parser.add_argument("--gateway-kills", type=int, default=12)
    parser.add_argument("--no-wipe", dest="wipe", action="store_false")
    parser.add_argument("--terminals", type=int, default=8)
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes")
    parser.add_argument("--persons", type=int, default=2000)
    args = parser.parse_args(argv)
    args.seconds = args.minutes * 60
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medsettle-faults-") as d:
        figures, problems, audit_line = asyncio.run(campaign(args, Path(d)))
    print(report(figures, problems, audit_line, time.monotonic() - started), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
