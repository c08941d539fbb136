"""Ledger bytes per settlement, measured: `count` 10-line Settles (every tenth reversed) through the
service layer on an embedded redis-server, booked by the posting worker into a fresh PostgreSQL
database, then each table's size with its indexes (pg_total_relation_size, summed over its partitions)
divided by the settlements.
The yearly growth in docs/SCALING.md is this times the settlements a year.

    python -m loadtest.ledger_growth --count 5000 [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

import psycopg

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.codec import Envelope, PersonRef
from gateway.correction_service import Target
from gateway.ops.durability import Durability
from gateway.posting.worker import PostingWorker, WorkerConfig
from loadtest.failover import BILL, HOSPITAL, PERSONS, add_persons, default_gateway

TABLES = ("journal", "journal_funds", "transfers", "records")


async def settle(url: str, count: int) -> int:
    gw = await default_gateway(url, Durability())
    try:
        await add_persons(gw)
        assert gw.service is not None and gw.corrections is not None
        for n in range(count):
            env = Envelope(HOSPITAL, "T1", "op", f"{HOSPITAL}G{n:012d}")
            done = await gw.service.settle(env, PersonRef(f"L{n % PERSONS:08d}", None), BILL, f"g{n}")
            if n % 10 == 0:
                renv = Envelope(HOSPITAL, "T1", "op", f"{HOSPITAL}R{n:012d}")
                await gw.corrections.reverse(renv, Target(done.settlement_id, "", None), f"r{n}")
    finally:
        await gw.stop()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ledger_growth")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    name = f"medsettle_growth_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = args.postgres.rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
            count = asyncio.run(settle(server.url, args.count))
            ledger = Ledger(dsn)
            worker = PostingWorker(
                sync_client(server.url), ledger, WorkerConfig(retention=None, block_ms=100)
            )
            worker.prepare()
            idle = 0
            while idle < 5:
                idle = idle + 1 if worker.step() == 0 else 0
            ledger.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            total = 0
            for table in TABLES:
                # a partitioned table holds nothing itself: its size is its partitions' (PostgreSQL 12+)
                (size,) = conn.execute(
                    "SELECT COALESCE(SUM(pg_total_relation_size(relid)), 0) FROM pg_partition_tree(%s)",
                    (table,),
                ).fetchone() or (0,)
                (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
                total += int(size)
                print(f"{table:14s} {rows:7d} rows  {int(size) / count:7.0f} bytes per settlement")
            what = f"({count} settled, a tenth reversed)"
            print(f"{'total':27s} {total / count:7.0f} bytes per settlement {what}")
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
