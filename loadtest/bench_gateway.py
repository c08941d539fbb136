"""Gateway benchmark: Settle (10-line outpatient bill) next to a no-op RPC on the same server in the same
run, closed-loop maximum throughput and open-loop latency at a fixed offered load, and Redis commands per
Settle from INFO commandstats deltas.

    .venv/bin/python -m loadtest.bench_gateway [--seconds 8] [--rate 500] [--concurrency 32] [--workers 2]
        [--insecure] [--wrap "py-spy record -o profile.svg --subprocesses --"]

The gateway runs in its own processes (`medsettle serve --workers N`, loadtest/stack.py: mutual TLS with
the development PKI serve creates in its data folder, the per-institution edge limits lifted) against a
redis-server with AOF on (appendfsync always, the embedded default) started here; the load comes
from this process's grpc.aio client presenting the hospital's client certificate, on the same 2-core
machine, so the client's own CPU is part of every figure. --insecure: plaintext (`serve --insecure`).
Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import redis

from gateway.protos import pb, pb_grpc
from loadtest import proc_cpu
from loadtest.stack import running_stack
from loadtest.synthetic import OUTPATIENT_10_LINES

HOSPITAL = "H50010300001"  # the synthetic persons are Chongqing employees; its certificate is presented


def settle_requests(persons: int, count: int, run: str) -> Iterator[Any]:
    bill = pb.Bill(
        visit_type=pb.VISIT_TYPE_OUTPATIENT,
        lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in OUTPATIENT_10_LINES],
    )
    for i in range(count):
        yield pb.SettleRequest(
            envelope=pb.Envelope(institution_code=HOSPITAL, terminal_id="B", message_id=f"{run}{i:012d}"),
            person=pb.PersonRef(card_no=f"L{i % persons:08d}"),
            bill=bill,
        )


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))] if sorted_ms else float("nan")


async def closed_loop(
    call: Callable[[Any], Any], requests: Iterator[Any], seconds: float, workers: int
) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call(next(requests))
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - start)


async def open_loop(
    call: Callable[[Any], Any], requests: Iterator[Any], seconds: float, rate: float
) -> list[float]:
    """Sends at fixed intervals whatever the replies do; latency counts from the scheduled send time,
    so a slow server is not hidden by a client that waits for it (coordinated omission)."""
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float, request: Any) -> None:
        nonlocal errors
        try:
            await call(request)
            latencies.append((time.perf_counter() - scheduled) * 1000)
        except grpc.aio.AioRpcError:
            errors += 1

    tasks = []
    start = time.perf_counter()
    for i in range(int(seconds * rate)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, next(requests))))
    await asyncio.gather(*tasks)
    if errors:
        print(f"  ({errors} errors at {rate}/s)")
    return sorted(latencies)


class CommandCounter:
    """Counts, with MONITOR, the commands clients send (round trips) apart from the commands Lua
    scripts run inside Redis (those cost no round trip)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: dict[str, int] = {}
        self.in_scripts: dict[str, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # redis-py's Monitor carries no annotations (its replies are plain dicts of str)
        with redis.Redis.from_url(self.url).monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            for event in monitor.listen():
                if self._stop.is_set():
                    return
                name = event["command"].split(" ", 1)[0].strip('"').lower()
                bucket = self.in_scripts if event.get("client_type") == "lua" else self.sent
                bucket[name] = bucket.get(name, 0) + 1

    def __enter__(self) -> CommandCounter:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._stop.set()
        redis.Redis.from_url(self.url).ping()  # wake the monitor so it sees the stop flag
        self._thread.join(5)


async def bench(args: argparse.Namespace) -> None:
    wrapper = args.wrap.split() if args.wrap else None
    # SIGINT lets a wrapping profiler write its output
    stop = signal.SIGINT if wrapper else signal.SIGTERM
    with running_stack(args.persons, args.workers, args.insecure, wrapper=wrapper, stop_signal=stop) as stack:
        # under a wrapper, serve is the wrapper's child and the gateway processes its grandchildren
        serve_pids = proc_cpu.children(stack.server.pid) if wrapper else [stack.server.pid]

        def cpu_seconds() -> float:
            return sum(proc_cpu.children_cpu_seconds(pid) for pid in serve_pids)

        async with stack.channel(HOSPITAL) as channel:
            await channel.channel_ready()
            settle = pb_grpc.SettlementServiceStub(channel).Settle
            ping = pb_grpc.DiagnosticsServiceStub(channel).Ping
            pings = itertools.repeat(pb.PingRequest())
            requests = settle_requests(args.persons, 10_000_000, "W")
            await closed_loop(settle, requests, 2.0, args.concurrency)  # warm: card cache, parsed persons
            counted = 500
            with CommandCounter(stack.redis_url) as counter:
                for request in settle_requests(args.persons, counted, "C"):
                    await settle(request)
            cpu0 = cpu_seconds()
            ping_max = await closed_loop(ping, pings, args.seconds, args.concurrency)
            cpu1 = cpu_seconds()
            settle_max = await closed_loop(settle, requests, args.seconds, args.concurrency)
            cpu2 = cpu_seconds()
            ping_cpu_us = (cpu1 - cpu0) / (ping_max * args.seconds) * 1e6
            settle_cpu_us = (cpu2 - cpu1) / (settle_max * args.seconds) * 1e6
            ping_lat = await open_loop(ping, pings, args.seconds, args.rate)
            settle_lat = await open_loop(settle, requests, args.seconds, args.rate)

    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    transport = "PLAINTEXT (--insecure)" if args.insecure else "mutual TLS"
    print(f"redis-server, AOF appendfsync always; {args.persons} persons; concurrency {args.concurrency}; "
          f"{args.workers} gateway processes; {transport}")  # fmt: skip
    print(
        f"{'rpc':<28}{'max calls/s':>12}{'vs no-op':>10}{'server CPU µs':>15}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'@ offered/s':>13}"
    )
    for name, top, cpu, lat in (
        ("no-op Ping", ping_max, ping_cpu_us, ping_lat),
        ("Settle, 10-line outpatient", settle_max, settle_cpu_us, settle_lat),
    ):
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        ratio = top / ping_max
        print(f"{name:<28}{top:>12.0f}{ratio:>10.2f}{cpu:>15.0f}{p50:>9.2f}{p99:>9.2f}{args.rate:>13.0f}")
    sent = {k: round(v / counted, 2) for k, v in sorted(counter.sent.items()) if k != "ping"}
    inner = {k: round(v / counted, 2) for k, v in sorted(counter.in_scripts.items())}
    print(f"redis commands sent per Settle (round trips): {sum(sent.values()):.2f} {sent}")
    print(f"  run inside the Lua scripts per Settle: {sum(inner.values()):.2f} {inner}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=500.0, help="offered load for the latency run, calls/s")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gateway processes")
    parser.add_argument("--insecure", action="store_true", help="plaintext: `serve --insecure`")
    parser.add_argument("--wrap", default="", help="command to run the gateway under, e.g. a profiler")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
