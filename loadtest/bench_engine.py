"""Engine micro-benchmark: microseconds per split for 10-, 60- and 100-line bills on demo data, next to
a baseline in the same run (building the same bill's line tuple, the least work any split must do).

    .venv/bin/python -m loadtest.bench_engine [--seconds 2] [--only]

The engine runs compiled when scripts/build-engine has built it from the current sources
(gateway/compiled_engine.py); the run then measures the sources too, in a second process
(MEDSETTLE_ENGINE=python), right after, so both tables come from the same run. --only: this process's
engine alone.

Prints figures; it is not a test and asserts nothing about speed."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any

from adapters.citydata_files import load_citydata
from gateway import compiled_engine
from gateway.engine import Split, split
from gateway.engine.model import Bill, BillLine, VisitType

ON = date(2026, 6, 15)


def timed(fn: Callable[[], object], seconds: float) -> tuple[float, float, int]:
    """(median, p99) microseconds per call over batches, and the number of calls."""
    batch = 200
    warm_until = time.perf_counter() + min(0.5, seconds / 2)  # let caches and the CPU clock settle
    while time.perf_counter() < warm_until:
        fn()
    samples: list[float] = []
    calls = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
        calls += batch
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)], calls


def demo_inputs() -> tuple[Any, Any, Any, Any, list[str]]:
    """Chongqing's policy and catalog, a level-3 hospital, an employee with a personal account, and the
    catalog's class A/B codes the bills are made of."""
    data = load_citydata()
    catalog = data.catalogs["500000"]
    codes = [
        e.code
        for found in catalog.periods.values()
        for e in found[:1]
        if e.item_class.value in "AB" and not e.special_diseases
    ]
    # level 3, Yuzhong; PSN500000000001 has a personal account
    return (
        data.policies["500000"][0],
        catalog,
        data.institutions["H50010300001"],
        data.persons["PSN500000000001"],
        codes,
    )


def inpatient_bill(codes: list[str], n_lines: int) -> Bill:
    lines = tuple(
        BillLine(codes[i * 7 % len(codes)], 1234 + i * 17, 1 + i % 3, i + 1) for i in range(n_lines)
    )
    return Bill(VisitType.INPATIENT, lines)


def measured(
    bill: Bill, policy: Any, catalog: Any, inst: Any, rec: Any, seconds: float
) -> tuple[float, float, float]:
    """(median, p99) µs of one split of `bill`, and the baseline's median, in this process."""
    assert isinstance(split(bill, policy, catalog, inst, rec.person, rec.state, ON), Split)
    # partial binds this bill, and keeps the call typed (a lambda default would not)
    median, p99, _ = timed(partial(split, bill, policy, catalog, inst, rec.person, rec.state, ON), seconds)
    base, _, _ = timed(partial(rebuilt, bill.lines), seconds / 2)
    return median, p99, base


def rebuilt(lines: tuple[BillLine, ...]) -> Bill:
    """The baseline: the same bill's line tuple built again, the least work any split must do."""
    return Bill(
        VisitType.INPATIENT, tuple(BillLine(x.code, x.unit_price_fen, x.quantity, x.line_no) for x in lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--only", action="store_true", help="measure this process's engine only")
    args = parser.parse_args()
    policy, catalog, inst, rec, codes = demo_inputs()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}; "
          f"engine: {compiled_engine.kind()}")  # fmt: skip
    print(f"{'bill':<22}{'median µs':>11}{'p99 µs':>9}{'µs/line':>9}{'baseline µs':>13}{'ratio':>7}")
    for n_lines in (10, 60, 100):
        bill = inpatient_bill(codes, n_lines)
        median, p99, base = measured(bill, policy, catalog, inst, rec, args.seconds)
        name = f"{n_lines}-line inpatient"
        per_line = median / n_lines
        print(f"{name:<22}{median:>11.1f}{p99:>9.1f}{per_line:>9.2f}{base:>13.1f}{median / base:>7.1f}x")
    if compiled_engine.kind() == "compiled" and not args.only:
        sys.stdout.flush()
        env = {**os.environ, compiled_engine.ENGINE_ENV: "python"}
        command = [sys.executable, "-m", "loadtest.bench_engine", "--only", "--seconds", str(args.seconds)]
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
