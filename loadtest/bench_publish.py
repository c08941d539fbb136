"""Publishing a large catalog under steady Settle load: does any Settle wait on it?

A real provincial drug list has about 60,000 entries; each gateway process validates a new catalog
version when it is announced. This runs `medsettle serve --workers N` over mTLS, sends Settles at a
fixed rate with the C load generator (latency from each call's scheduled send time), once without a
publication (the baseline) and once while a catalog of --entries entries is published, and prints the
latency of both windows beside the time one process takes to parse that catalog. The target: no
Settle slower than 50 ms because of the publication (the parse runs off the event loop).

    .venv/bin/python -m loadtest.bench_publish [--entries 60000] [--rate 200] [--seconds 12] [--workers 2]

Prints figures; asserts nothing (the exit status is 1 only when a call failed)."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtest import frames as fr
from loadtest import loadgen
from loadtest.certs import BenchPki
from loadtest.stack import CITYDATA, CLI, running_stack, secret_env
from rules_cache import catalog_blobs
from rules_cache.static_data import parse_blob

TARGET_MS = 50.0
REGION = "500000"


def catalog_rows(entries: int) -> list[dict[str, str]]:
    """The demo catalog of the region (so the Settles' codes stay covered) and synthetic drugs up to
    `entries` rows, each row as the core system's CSV export gives it."""
    with (CITYDATA / "catalogs" / f"{REGION}.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    template = dict(rows[0])
    for n in range(entries - len(rows)):
        row = dict(template)
        row.update(code=f"Z{n:07d}", name=f"合成药品{n}", effective_from="2024-01-01", effective_to="")
        rows.append(row)
    return rows


def publish(redis_url: str, catalog: Path) -> float:
    """`medsettle load --catalog`, as an operator would run it (at the lowest CPU priority: here it
    shares the two cores with the gateway; in production it runs on another machine). Seconds."""
    started = time.perf_counter()
    env = {**os.environ, **secret_env(redis_url)}
    subprocess.run(
        ["nice", "-n", "19", *CLI, "load", "--catalog", f"{REGION}={catalog}"], check=True, env=env,
        capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def window(binary: Path, port: int, frames: Path, args: argparse.Namespace, tls: Any) -> loadgen.Result:
    return loadgen.run(
        binary, port=port, path=fr.SETTLE_10.path, frames=frames, mode="paced", seconds=args.seconds,
        rate_per_s=args.rate, connections=8, streams_per_connection_max=512, tls=tls,
    )  # fmt: skip


def line(name: str, r: loadgen.Result) -> str:
    lat = r.latency_ms or {}
    return (
        f"| {name} | {r.ok} | {r.errors} | {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} |"
        f" {lat.get('p999', 0):.2f} | {lat.get('max', 0):.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=200.0, help="Settles per second, paced")
    parser.add_argument("--seconds", type=float, default=12.0, help="each window")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--persons", type=int, default=4_000)
    parser.add_argument("--publish-after-s", type=float, default=2.0)
    args = parser.parse_args(argv)

    rows = catalog_rows(args.entries)
    blob = catalog_blobs.encode(rows)
    started = time.perf_counter()
    parse_blob("catalog", REGION, "bench", blob)
    parse_s = time.perf_counter() - started

    binary = loadgen.build()
    with tempfile.TemporaryDirectory() as d, running_stack(args.persons, args.workers) as stack:
        assert stack.certs is not None
        tls = BenchPki(stack.certs).loadgen_tls(fr.HOSPITAL)
        calls = int(args.rate * args.seconds) + 100
        baseline_frames, publish_frames = Path(d) / "a", Path(d) / "b"
        fr.call_frames(baseline_frames, fr.SETTLE_10, calls, args.persons)
        fr.call_frames(publish_frames, fr.SETTLE_10, calls, args.persons)
        window(
            binary, stack.port, baseline_frames, argparse.Namespace(seconds=1.0, rate=args.rate), tls
        )  # warm
        baseline = window(binary, stack.port, baseline_frames, args, tls)
        published: list[float] = []

        exported = Path(d) / "catalog.csv"
        with exported.open("w", encoding="utf-8", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)

        def later() -> None:
            time.sleep(args.publish_after_s)
            published.append(publish(stack.redis_url, exported))

        thread = threading.Thread(target=later)
        thread.start()
        during = window(binary, stack.port, publish_frames, args, tls)
        thread.join()

    size_mb = len(blob) / 1e6
    print(f"catalog of {len(rows)} entries: {size_mb:.1f} MB as published; one process takes it up in")
    print(f"  {parse_s * 1000:.0f} ms (off the event loop); publishing took {published[0]:.2f} s here")
    print(
        f"Settle, 10 lines, paced at {args.rate:g}/s for {args.seconds:g} s, {args.workers} processes, mTLS"
    )
    print("| window | ok | errors | p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    print(line("no publication", baseline))
    print(line(f"publication of {len(rows)} entries", during))
    worst = (during.latency_ms or {}).get("max", 0.0)
    before = (baseline.latency_ms or {}).get("max", 0.0)
    verdict = "met" if worst <= max(TARGET_MS, before) else "missed"
    print(f"target: no Settle slower than {TARGET_MS:g} ms because of the publication: {verdict}")
    print(f"  (max {worst:.1f} ms with it, {before:.1f} ms without)")
    failed = baseline.errors + during.errors
    if failed:
        print(f"{failed} calls failed: {baseline.error_summary} / {during.error_summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
