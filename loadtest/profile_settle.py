"""Where a Settle's CPU goes: py-spy attached to every gateway process during a closed loop of Settles
(10-line outpatient bills, fresh message ids), its samples grouped into components, printed as µs per
Settle beside the gateway's total CPU per Settle from /proc over the same window.

    .venv/bin/python -m loadtest.profile_settle [--seconds 10] [--workers 2] [--insecure]
        [--raw-out DIR]                 # keep py-spy's raw (collapsed) stacks
    .venv/bin/python -m loadtest.profile_settle --classify FILE...   # group stacks recorded earlier

py-spy samples with `--gil`: only the thread holding the GIL, i.e. Python work (and C code that keeps the
GIL: protobuf's upb parser, hiredis, the json encoder). Each sample is 1/rate seconds of it, so a
component's µs per Settle is its samples / rate / Settles answered in the window. What the processes
spent without the GIL (gRPC core's HTTP/2 and TLS in C, syscalls, the kernel's loopback TCP) is the
/proc total minus the sampled Python time: one row, "native, GIL released".

A stack is charged to the innermost frame that belongs to a component (library or our package);
frames of the standard library (dataclasses, enum, re, ...) are skipped over, so they count for the
code that called them. asyncio's own frames count as the event loop, a callback with no Python frame
below `Handle._run` as gRPC's Cython layer (its completion-queue callbacks). The load comes from this
process's grpc.aio client; py-spy watches only the gateway processes, so it is not in the table, but it
shares the two cores, so the throughput here is not the benchmark's. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.protos import pb_grpc
from loadtest import proc_cpu
from loadtest.bench_gateway import HOSPITAL, closed_loop, settle_requests
from loadtest.stack import running_stack

PY_SPY = Path(sys.executable).with_name("py-spy")
SAMPLES_PER_S = 200  # py-spy's default is 100; 200 keeps its cost low and the counts meaningful

# (component, path fragments): the first component a frame's file matches, innermost frame first
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("redis-py client (commands, connection, parser)", ("redis/",)),
    ("protobuf (parse, serialize)", ("google/protobuf",)),
    ("metrics (prometheus_client, telemetry/)", ("prometheus_client/", "telemetry/")),
    ("logs and audit log (logging, json)", ("logging/", "gateway/logs.py", "gateway/audit.py", "json/")),
    ("engine: split and year fold (gateway/engine)", ("gateway/engine/",)),
    ("edge: identity, limits, privacy (gateway/edge)", ("gateway/edge/",)),
    ("store: scripts, batching, records (adapters/)", ("adapters/",)),
    ("rules cache and cachetools (rules_cache/)", ("rules_cache/", "cachetools/")),
    ("service, servicer, codec (gateway/*.py)", ("gateway/",)),
    ("gRPC aio server (grpc/ Python)", ("grpc/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
]
NATIVE_CALLBACK = "gRPC Cython callbacks (no Python frame)"


def component(frames: list[str]) -> str:
    for frame in reversed(frames):
        file = frame.rsplit("(", 1)[-1]
        for name, fragments in COMPONENTS:
            if any(fragment in file for fragment in fragments):
                if name == "asyncio event loop" and frame is frames[-1] and frame.startswith("Handle._run"):
                    return NATIVE_CALLBACK
                return name
    return "other (interpreter start-up, threads)"


def classify(lines: list[str]) -> collections.Counter[str]:
    """Samples per component, from py-spy's raw output (one stack per line: frames;... count)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        counts[component(frames)] += int(count)
    return counts


def print_table(counts: collections.Counter[str], settles: int, cpu_us: float | None) -> None:
    python_us = sum(counts.values()) / SAMPLES_PER_S / settles * 1e6
    print(f"{'component':<52}{'µs/Settle':>10}{'share':>8}")
    total = cpu_us if cpu_us is not None else python_us
    for name, n in counts.most_common():
        us = n / SAMPLES_PER_S / settles * 1e6
        print(f"{name:<52}{us:>10.0f}{us / total:>8.0%}")
    if cpu_us is not None:
        native = cpu_us - python_us
        print(f"{'native, GIL released (gRPC core, TLS, kernel)':<52}{native:>10.0f}{native / total:>8.0%}")
        print(f"{'total CPU per Settle, from /proc':<52}{cpu_us:>10.0f}{1:>8.0%}")


async def profile(args: argparse.Namespace, out: Path) -> tuple[collections.Counter[str], int, float, float]:
    with running_stack(args.persons, args.workers, args.insecure) as stack:
        pids = proc_cpu.children(stack.server.pid)
        async with stack.channel(HOSPITAL) as channel:
            await channel.channel_ready()
            settle = pb_grpc.SettlementServiceStub(channel).Settle
            requests = settle_requests(args.persons, 10_000_000, "P")
            await closed_loop(settle, requests, 3.0, args.concurrency)  # warm: caches, parsed persons
            spies = [
                subprocess.Popen(
                    [
                        str(PY_SPY),
                        "record",
                        "--gil",
                        *(["--native"] if args.native else ["--nonblocking"]),
                        "-r",
                        str(SAMPLES_PER_S),
                        "-f",
                        "raw",
                        "-d",
                        str(int(args.seconds)),
                        "-p",
                        str(pid),
                        "-o",
                        str(out / f"{pid}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid in pids
            ]
            time.sleep(1.0)  # py-spy attaches
            before = proc_cpu.snapshot(pids)
            rate = await closed_loop(settle, requests, args.seconds - 1.0, args.concurrency)
            after = proc_cpu.snapshot(pids)
            for spy in spies:
                spy.wait(timeout=60)
    settles = int(rate * (args.seconds - 1.0))
    cpu_us = sum(proc_cpu.used(before, after).values()) / settles * 1e6
    lines = [line for f in sorted(out.glob("*.txt")) for line in f.read_text().splitlines()]
    # py-spy samples for `seconds`; the measured window is one second shorter: scale the samples to it
    counts = collections.Counter(
        {k: round(v * (args.seconds - 1.0) / args.seconds) for k, v in classify(lines).items()}
    )
    return counts, settles, cpu_us, rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames too (costlier; see what grpc does)"
    )
    parser.add_argument("--raw-out", type=Path, help="keep py-spy's raw stacks in this folder")
    parser.add_argument("--classify", type=Path, nargs="+", help="group raw stacks recorded earlier")
    parser.add_argument("--settles", type=int, default=0, help="with --classify: Settles in the window")
    args = parser.parse_args()
    if args.classify:
        counts = classify([line for f in args.classify for line in f.read_text().splitlines()])
        print_table(counts, args.settles or 1, None)
        return
    if not PY_SPY.exists():
        raise SystemExit(f"py-spy is not installed in {PY_SPY.parent} (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.raw_out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        counts, settles, cpu_us, rate = asyncio.run(profile(args, out))
    transport = "plaintext" if args.insecure else "mutual TLS"
    print(
        f"{args.workers} gateway processes, {transport}; {settles} Settles in {args.seconds - 1:.0f} s "
        f"({rate:.0f}/s)"
    )
    print_table(counts, settles, cpu_us)


if __name__ == "__main__":
    main()
