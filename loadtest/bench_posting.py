"""Posting benchmark: settlements booked per second into the ledger (SQLite and PostgreSQL), and the
posting lag (age of the oldest entry not yet booked) while settlements arrive at a fixed rate.

    .venv/bin/python -m loadtest.bench_posting [--events 20000] [--rate 500] [--seconds 10]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

Events are real settle events (the shape the gateway commits) written straight to the partition
streams, so the figures are the worker's and the database's alone. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.posting.worker import PostingWorker, WorkerConfig

DISTRICTS = ("500103", "500104", "500105", "500106", "500107", "500101")


def event(i: int) -> tuple[str, dict[str, str]]:
    person = f"PSNLT{i % 5000:08d}"
    partition = keys.partition_of(person)
    sid = f"S{partition:03d}-260615-{i:016x}"
    body = {
        "type": "settle", "sid": sid, "msgid": f"M{i:012d}", "at": "2026-06-15T10:30:00+08:00",
        "inst": "H50010300001", "inst_region": "500000", "inst_district": "500103", "city_managed": False,
        "insured_region": "500000", "insured_district": DISTRICTS[i % len(DISTRICTS)], "scheme": "employee",
        "visit": "outpatient", "person": person, "total": 16_200, "funds": {"310100": 5_000},
        "account": 9_000, "cash": 2_200, "policy": "cq-2026.1", "catalog": "500000-demo",
    }  # fmt: skip
    return keys.stream_key(partition), {"type": "settle", "sid": sid, "event": json.dumps(body)}


def backlog_age_ms(r: redis.Redis) -> tuple[int, float]:
    pipe = r.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.xrange(keys.stream_key(p), count=1)
    oldest = [int(x[0][0].split(b"-")[0]) for x in pipe.execute() if x]
    size = len(oldest)
    return size, (time.time() * 1000 - min(oldest)) if oldest else 0.0


def fresh_postgres(admin_dsn: str) -> str:
    import psycopg

    name = f"medsettle_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres(admin_dsn: str, dsn: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")


def run_worker(client: redis.Redis, dsn: str) -> tuple[threading.Event, threading.Thread, PostingWorker]:
    worker = PostingWorker(client, Ledger(dsn), WorkerConfig(consumer="bench", batch_max=500, block_ms=200))
    worker.prepare()
    # the events' month and region, as the worker would have made them ahead (PostgreSQL: its partitions)
    worker.ledger.ensure_partitions("2026-06", ["500000"])
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread, worker


def throughput(client: redis.Redis, dsn: str, events: int, offset: int) -> float:
    pipe = client.pipeline(transaction=False)
    for i in range(offset, offset + events):
        stream, fields = event(i)
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    pipe.execute()
    start = time.perf_counter()
    stop, thread, worker = run_worker(client, dsn)
    while worker.stats.booked < events:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    return events / elapsed


def lag(client: redis.Redis, dsn: str, rate: float, seconds: float, offset: int) -> list[float]:
    stop, thread, worker = run_worker(client, dsn)
    samples: list[float] = []
    start = time.perf_counter()
    sent = 0
    next_sample = start
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * rate)
        if due > sent:
            pipe = client.pipeline(transaction=False)
            for i in range(sent, due):
                stream, fields = event(offset + i)
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            pipe.execute()
            sent = due
        if time.perf_counter() >= next_sample:
            samples.append(backlog_age_ms(client)[1])
            next_sample += 0.1
        time.sleep(0.002)
    while worker.stats.booked < sent:
        time.sleep(0.01)
    stop.set()
    thread.join()
    return sorted(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        client = redis.Redis.from_url(server.url)
        targets = [("SQLite (WAL, synchronous=FULL)", f"sqlite:///{tmp}/ledger.db")]
        try:
            targets.append(("PostgreSQL", fresh_postgres(args.postgres)))
        except Exception as exc:
            print(f"PostgreSQL skipped: {exc}")
        head = f"{'ledger':<32}{'booked/s':>10}{'lag p50 ms':>12}{'lag p99 ms':>12}{'lag max ms':>12}"
        print(head + "  at settles/s")
        offset = 0
        for name, dsn in targets:
            rate = throughput(client, dsn, args.events, offset)
            offset += args.events
            samples = lag(client, dsn, args.rate, args.seconds, offset)
            offset += int(args.rate * args.seconds) + 1
            p50 = statistics.median(samples)
            p99 = samples[int(len(samples) * 0.99)]
            print(f"{name:<32}{rate:>10.0f}{p50:>12.0f}{p99:>12.0f}{samples[-1]:>12.0f}  {args.rate:.0f}")
            if dsn.startswith("postgresql"):
                drop_postgres(args.postgres, dsn)


if __name__ == "__main__":
    main()
