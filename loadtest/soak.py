"""Soak: Settles at a fixed rate (default: half the measured maximum) for 10 minutes against
`medsettle serve --workers N` with Redis AOF on; counts errors and samples the gateway processes'
resident memory. Passes when there is no error and memory grew under 10% from the first minute's end.

    .venv/bin/python -m loadtest.soak [--rate 300] [--minutes 10]

Prints figures and exits 1 when the run fails."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import grpc

from gateway.protos import pb_grpc
from loadtest.bench_gateway import settle_requests
from loadtest.stack import running_stack


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def gateway_pids(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                out.append(int(entry.name))
    return out


async def soak(
    port: int, rate: float, seconds: float, persons: int, pids: list[int]
) -> tuple[int, int, list[int]]:
    requests = settle_requests(persons, 10_000_000, f"SOAK{os.getpid()}")
    ok = errors = 0
    samples: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        settle = pb_grpc.SettlementServiceStub(channel).Settle

        async def one(request: object) -> None:
            nonlocal ok, errors
            try:
                await settle(request, timeout=5)
                ok += 1
            except grpc.aio.AioRpcError:
                errors += 1

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        next_sample = start
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            while i < (now - start) * rate:
                task = asyncio.create_task(one(next(requests)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if now >= next_sample:
                samples.append(rss_kib(pids))
                next_sample += 10
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    return ok, errors, samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with running_stack(5000, args.workers) as stack:
        pids = gateway_pids(stack.server.pid)
        ok, errors, samples = asyncio.run(soak(stack.port, args.rate, args.minutes * 60, 5000, pids))
    base = samples[min(6, len(samples) - 1)]  # after the first minute: caches warm, pools full
    growth = (samples[-1] - base) / base * 100
    print(
        f"soak: {args.minutes:g} min at {args.rate:.0f} Settles/s offered, {args.workers} gateway processes"
    )
    print(f"  settled {ok}, errors {errors}")
    print(f"  gateway RSS: {base / 1024:.1f} MiB after 1 min, {samples[-1] / 1024:.1f} MiB at the end "
          f"({growth:+.1f}%), peak {max(samples) / 1024:.1f} MiB")  # fmt: skip
    passed = errors == 0 and growth < 10
    print(f"  {'PASSED' if passed else 'FAILED'} (no errors, memory growth under 10%)")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
