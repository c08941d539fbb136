"""Soak: Settles at a fixed rate (default: half the measured maximum) for 10 minutes against
`medsettle serve --workers N` with Redis AOF on, over mutual TLS (loadtest/stack.py: the development PKI
serve creates, the hospital's client certificate, the per-institution edge limits lifted); counts errors
and samples the gateway processes' resident memory. Passes when there is no error and memory grew under
10% from the first minute's end.

    .venv/bin/python -m loadtest.soak [--rate 300] [--minutes 10] [--workers 2] [--insecure]

Prints figures and exits 1 when the run fails."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path

import grpc

from gateway.protos import pb_grpc
from loadtest import proc_cpu
from loadtest.bench_gateway import HOSPITAL, settle_requests
from loadtest.stack import Stack, running_stack

PERSONS = 5000
RSS_SAMPLE_S = 10  # one memory sample every 10 s: the first minute's end is the seventh


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def soak(
    stack: Stack, rate: float, seconds: float, persons: int, pids: list[int]
) -> tuple[int, collections.Counter[str], list[int]]:
    requests = settle_requests(persons, 10_000_000, f"SOAK{os.getpid()}")
    ok = 0
    errors: collections.Counter[str] = collections.Counter()  # by status code: a refusal says which
    samples: list[int] = []
    async with stack.channel(HOSPITAL) as channel:
        settle = pb_grpc.SettlementServiceStub(channel).Settle

        async def one(request: object) -> None:
            nonlocal ok
            try:
                await settle(request, timeout=5)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1

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
                next_sample += RSS_SAMPLE_S
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    return ok, errors, samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--insecure", action="store_true", help="plaintext: `serve --insecure`")
    args = parser.parse_args()
    with running_stack(PERSONS, args.workers, args.insecure) as stack:
        pids = proc_cpu.children(stack.server.pid)  # the gateway processes, not the supervisor
        ok, errors, samples = asyncio.run(soak(stack, args.rate, args.minutes * 60, PERSONS, pids))
    # after the first minute: caches warm, pools full
    base = samples[min(60 // RSS_SAMPLE_S, len(samples) - 1)]
    growth = (samples[-1] - base) / base * 100
    transport = "PLAINTEXT (--insecure)" if args.insecure else "mutual TLS"
    print(f"soak: {args.minutes:g} min at {args.rate:.0f} Settles/s offered, {args.workers} gateway "
          f"processes, {transport}")  # fmt: skip
    by_code = ", ".join(f"{code} {n}" for code, n in errors.most_common())
    print(f"  settled {ok}, errors {errors.total()}" + (f" ({by_code})" if by_code else ""))
    print(f"  gateway RSS: {base / 1024:.1f} MiB after 1 min, {samples[-1] / 1024:.1f} MiB at the end "
          f"({growth:+.1f}%), peak {max(samples) / 1024:.1f} MiB")  # fmt: skip
    passed = not errors and growth < 10
    print(f"  {'PASSED' if passed else 'FAILED'} (no errors, memory growth under 10%)")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
