"""Redis memory over a long run at a fixed rate, with retention on: is it flat?

Years of settlements in minutes: the gateway's and the posting worker's clocks move through simulated
days (the service layer in process, a real redis-server, a real SQLite ledger, the real worker and its
retention sweep); each simulated day settles the same number of 10-line outpatient bills. Message
records expire in real time, so here their window (7 days in production) is scaled to the run
(`--idempotency-window-ms`). Printed each simulated month: settlements live in Redis, Redis
`used_memory`, and bytes per live settlement above the baseline, which is the same Redis measured in the
same run before the first settlement (static data and persons loaded).

Flat means: once two plan-years are in Redis (the correction window), every later year's peak stays
within 10% of the first full window's peak; the live settlements never exceed two plan-years' worth.
With `--settlement-retention-days N` (retention by days, gateway/posting/retention.py) the window is N
days of settlements instead, full from the second year; `--compare-days N` runs both, one after the
other in the same process, and prints the second's peak memory against the first's.

    .venv/bin/python -m loadtest.bench_memory [--years 4] [--per-day 20] [--every-days 7]
        [--settlement-retention-days 90 | --compare-days 90]

Exits 1 when memory is not flat."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_keys import IndexKeys
from gateway.codec import Envelope, PersonRef
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.engine.model import Bill, BillLine, VisitType
from gateway.posting.retention import RetentionConfig
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.server import Gateway, redis_client
from loadtest.synthetic import OUTPATIENT_10_LINES, persons

ZONE = ZoneInfo("Asia/Shanghai")
HOSPITAL = "H50010300001"
PERSONS = 300
FLAT_TOLERANCE = 0.10
FIRST_YEAR = 2026  # the demo policies are in force from 2026-01-01


@dataclass
class Sample:
    day: date
    settled: int
    live: int
    used_bytes: int


class Clock:
    def __init__(self, day: date) -> None:
        self.day = day

    def now(self) -> datetime:
        return datetime(self.day.year, self.day.month, self.day.day, 10, 0, tzinfo=ZONE)

    def today(self) -> date:
        return self.day


def live_settlements(r: redis.Redis) -> int:
    """Settlement hashes in Redis (not the plan-year indexes, which also name persons whose settlements
    retention by days took)."""
    return sum(1 for _ in r.scan_iter(match="ms:{p*}:stl:*", count=1000))


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def drain(worker: PostingWorker, r: redis.Redis) -> None:
    while True:
        worker.step()
        pipe = r.pipeline(transaction=False)
        for p in range(keys.PARTITIONS):
            pipe.xlen(keys.stream_key(p))
        if sum(pipe.execute()) == 0:
            return


async def run(
    years: int, per_day: int, every_days: int, window_ms: int, folder: Path, days: int | None = None
) -> list[Sample]:
    server = EmbeddedRedis(folder / "redis").start()
    try:
        index_key = secrets.token_bytes(32)
        config = Config(
            listen="127.0.0.1:0", redis_url=server.url, tls=None, index_key=index_key,
            ledger_dsn=f"sqlite:///{folder / 'ledger.db'}",
        )  # fmt: skip
        client = redis_client(server.url, config)
        await load_citydata_dir(client, config.citydata, index=IndexKeys(index_key))
        await client.aclose()
        clock = Clock(date(FIRST_YEAR, 1, 1))
        gw = await Gateway(config, server.url, now=clock.now).start()
        assert gw.store is not None and gw.service is not None
        gw.store.idempotency_ttl_ms = window_ms  # the 7-day window, scaled to the run (real time)
        for record in persons(PERSONS):
            await gw.store.put_person(record)
        sync = redis.Redis.from_url(server.url)
        assert gw.store is not None
        ledger = Ledger(config.ledger_dsn or "")
        worker = PostingWorker(
            sync,
            ledger,
            WorkerConfig(consumer="bench", retention=RetentionConfig(sweep_every_s=0, settlement_days=days)),
            today=clock.today,
        )
        worker.prepare()
        samples = [Sample(clock.day, 0, 0, used_memory(sync))]
        settled, n = 0, 0
        end = date(FIRST_YEAR + years, 1, 1)
        last_month = ""
        while clock.day < end:
            bill = Bill(
                VisitType.OUTPATIENT,
                tuple(BillLine(c, p, q, i + 1) for i, (c, p, q) in enumerate(OUTPATIENT_10_LINES)),
                visit_on=clock.day,
            )
            for _ in range(per_day * every_days):
                n += 1
                env = Envelope(HOSPITAL, "T1", "op", f"MEM{n:010d}")
                await gw.service.settle(env, PersonRef(f"L{n % PERSONS:08d}", None), bill, f"h{n}")
                settled += 1
            await asyncio.to_thread(drain, worker, sync)
            assert worker.retention is not None
            await asyncio.to_thread(worker.retention.sweep)
            month = clock.day.strftime("%Y-%m")
            if month != last_month:
                last_month = month
                samples.append(Sample(clock.day, settled, live_settlements(sync), used_memory(sync)))
                s = samples[-1]
                per = (s.used_bytes - samples[0].used_bytes) / s.live if s.live else 0.0
                print(
                    f"{s.day}  settled {s.settled:8d}  live in Redis {s.live:7d}  used_memory"
                    f" {s.used_bytes / 2**20:7.1f} MiB  {per:6.0f} B per live settlement",
                    flush=True,
                )
            clock.day += timedelta(days=every_days)
        await gw.stop()
        ledger.close()
        return samples
    finally:
        server.stop()


def verdict(
    samples: list[Sample], per_day: int, every_days: int, days: int | None = None
) -> tuple[bool, str]:
    baseline = samples[0].used_bytes
    peaks: dict[int, int] = {}
    for s in samples[1:]:
        peaks[s.day.year] = max(peaks.get(s.day.year, 0), s.used_bytes - baseline)
    years = sorted(peaks)
    if len(years) < 4:
        return False, "run at least 4 simulated years: two to fill the window, two to see it stay flat"
    full = 2 if days is None else 1  # the first year that starts with a full window in Redis
    reference = peaks[years[full]]
    worst = max(peaks[y] for y in years[full + 1 :])
    most_live = max(s.live for s in samples)
    kept_days = 2 * 366 if days is None else days  # two plan-years, or the days
    window = (kept_days + 2 * every_days) * per_day  # give or take a step at each end
    lines = [
        f"baseline (static data and {PERSONS} persons, no settlement): {baseline / 2**20:.1f} MiB",
        "peak above baseline by year: " + ", ".join(f"{y} {peaks[y] / 2**20:.1f} MiB" for y in years),
        f"most settlements live in Redis: {most_live} ({'two plan-years' if days is None else f'{days} days'}"
        f" at this rate: at most {window})",
    ]
    live = [s for s in samples if s.live]
    if live:
        last = live[-1]
        lines.append(f"bytes per live settlement at the end: {(last.used_bytes - baseline) / last.live:.0f}")
    flat = worst <= reference * (1 + FLAT_TOLERANCE) and most_live <= window
    lines.append(
        f"{'FLAT' if flat else 'NOT FLAT'}: later peaks at most {worst / reference:.2f}x the"
        f" {years[full]} peak (tolerance {1 + FLAT_TOLERANCE:.2f}x)"
    )
    return flat, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--years", type=int, default=4)
    parser.add_argument("--per-day", type=int, default=20, help="settlements per simulated day")
    parser.add_argument("--every-days", type=int, default=7, help="simulated days per step")
    parser.add_argument("--idempotency-window-ms", type=int, default=2000)
    parser.add_argument("--settlement-retention-days", type=int, default=None)
    parser.add_argument("--compare-days", type=int, default=None, help="plan-years, then these days")
    args = parser.parse_args(argv)
    started = time.monotonic()
    modes = [args.settlement_retention_days] if args.compare_days is None else [None, args.compare_days]
    peaks: list[int] = []
    ok = True
    for days in modes:
        print(f"== retention: {'two plan-years' if days is None else f'{days} days'}", flush=True)
        with tempfile.TemporaryDirectory(prefix="medsettle-memory-") as folder:
            samples = asyncio.run(
                run(args.years, args.per_day, args.every_days, args.idempotency_window_ms, Path(folder), days)
            )
        flat, report = verdict(samples, args.per_day, args.every_days, days)
        print(report)
        ok = ok and flat
        peaks.append(max(s.used_bytes for s in samples) - samples[0].used_bytes)
    if len(peaks) == 2:
        print(
            f"peak above baseline: two plan-years {peaks[0] / 2**20:.1f} MiB, {args.compare_days} days"
            f" {peaks[1] / 2**20:.1f} MiB ({peaks[1] / peaks[0]:.2f}x)"
        )
    print(f"({time.monotonic() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
