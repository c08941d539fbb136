"""The posting worker on a real redis-server and real databases: every committed settlement booked
exactly once, whatever is delivered twice, refused, or crashes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client as client_for
from gateway.audit import audit_redis
from gateway.codec import Envelope, PersonRef
from gateway.correction_service import Target
from gateway.engine.model import Bill, BillLine, VisitType
from gateway.posting.worker import DEADLETTER, GROUP, PostingWorker, WorkerConfig
from gateway.protos import pb
from gateway.server import Gateway
from loadtest.synthetic import OUTPATIENT_10_LINES, persons

from ..gateway.conftest import HOSPITAL

pytestmark = pytest.mark.asyncio
BILL = Bill(
    VisitType.OUTPATIENT, tuple(BillLine(c, p, q, i + 1) for i, (c, p, q) in enumerate(OUTPATIENT_10_LINES))
)
PERSONS = 40


async def add_persons(gw: Gateway) -> None:
    assert gw.service is not None
    for record in persons(PERSONS):
        await gw.store.put_person(record)


async def settle_many(gw: Gateway, count: int, start: int = 0, reverse_every: int = 0) -> list[str]:
    assert gw.service is not None
    sids = []
    for i in range(start, start + count):
        env = Envelope(HOSPITAL if i % 2 else "H50010600001", "T", "op", f"MSG{i:08d}")
        settled = await gw.service.settle(env, PersonRef(f"L{i % PERSONS:08d}", None), BILL, f"h{i}")
        sids.append(settled.settlement_id)
        if reverse_every and i % reverse_every == 0:
            renv = Envelope(env.institution_code, "T", "op", f"REV{i:08d}")
            assert gw.corrections is not None
            await gw.corrections.reverse(renv, Target(settled.settlement_id, "", None), f"r{i}")
    return sids


def redis_truth(r: redis.Redis) -> dict[str, Any]:
    """What the gateway committed, read back from Redis: the figures the ledger must equal."""
    funds: dict[str, int] = {}
    settled = reversed_ = 0
    for key in r.scan_iter(match="ms:{p*}:stl:*", count=1000):
        status, raw = r.hmget(key, "status", "resp")
        response = pb.SettleResponse.FromString(raw)
        settled += 1
        if status == b"reversed":
            reversed_ += 1
            continue  # settled and reversed: nets to zero in the ledger
        for f in response.split.funds:
            if f.amount_fen:
                funds[f.fund_code] = funds.get(f.fund_code, 0) + f.amount_fen
        funds["account"] = funds.get("account", 0) + response.split.account_fen
    return {"settled": settled, "reversed": reversed_, "funds": funds}


def ledger_truth(ledger: Ledger) -> dict[str, Any]:
    counts = dict(ledger.query("SELECT kind, COUNT(*) FROM journal GROUP BY kind"))
    funds = {
        code: int(v)
        for code, v in ledger.query("SELECT fund_code, SUM(amount_fen) FROM journal_funds GROUP BY fund_code")
        if int(v)
    }
    ((account,),) = ledger.query("SELECT COALESCE(SUM(account_fen), 0) FROM journal")
    funds["account"] = int(account)
    dupes = ledger.query(
        "SELECT settlement_id, kind, COUNT(*) FROM journal WHERE kind IN ('settle', 'reverse')"
        " GROUP BY settlement_id, kind HAVING COUNT(*) > 1"
    )
    assert not dupes
    unbalanced = ledger.query(
        # every journal: what left the funds and personal accounts, net (negative when it came back, for a
        # reversal), is exactly its fund total plus account payment
        "SELECT j.entry_id FROM journal j LEFT JOIN transfers t ON t.entry_id = j.entry_id"
        " GROUP BY j.entry_id, j.fund_total_fen, j.account_fen HAVING COALESCE(SUM(CASE"
        " WHEN t.debit LIKE 'fund:%' OR t.debit LIKE 'personal:%' THEN t.amount_fen"
        " WHEN t.credit LIKE 'fund:%' OR t.credit LIKE 'personal:%' THEN -t.amount_fen"
        " ELSE 0 END), 0) <> j.fund_total_fen + j.account_fen"
    )
    assert not unbalanced, unbalanced
    return {
        "settled": int(counts.get("settle", 0)),
        "reversed": int(counts.get("reverse", 0)),
        "funds": funds,
    }


def run_until_caught_up(worker: PostingWorker, r: redis.Redis, timeout_s: float = 30) -> None:
    """Runs the worker in a thread until every partition stream is empty and nothing is pending."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if backlog(r) == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"worker did not catch up: backlog {backlog(r)}")
    finally:
        stop.set()
        thread.join(10)


def backlog(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.xlen(keys.stream_key(p))
    return sum(pipe.execute())


@pytest.fixture
def sync_client(redis_server: EmbeddedRedis) -> redis.Redis:
    return client_for(redis_server.url)


async def test_every_settlement_and_reversal_is_booked_once(
    gateway: Gateway, sync_client: redis.Redis, ledger: Ledger
) -> None:
    await add_persons(gateway)
    await settle_many(gateway, 120, reverse_every=7)
    worker = PostingWorker(sync_client, ledger, WorkerConfig(consumer="w1", batch_max=50))
    await asyncio.to_thread(run_until_caught_up, worker, sync_client)
    truth = redis_truth(sync_client)
    assert truth["settled"] == 120 and truth["reversed"] == 18
    assert ledger_truth(ledger) == truth
    assert worker.stats.booked == 138 and worker.stats.dead_lettered == 0


async def test_duplicate_delivery_books_nothing_twice(
    gateway: Gateway, sync_client: redis.Redis, ledger: Ledger
) -> None:
    await add_persons(gateway)
    await settle_many(gateway, 10)
    entries = [e for p in range(keys.PARTITIONS) for e in sync_client.xrange(keys.stream_key(p))]
    worker = PostingWorker(sync_client, ledger, WorkerConfig(consumer="w1"))
    await asyncio.to_thread(run_until_caught_up, worker, sync_client)
    for stream_entry in entries:  # the same events delivered again, as after a crash before XACK
        stream = keys.stream_key(keys.partition_of_settlement(json.loads(stream_entry[1][b"event"])["sid"]))
        sync_client.xadd(stream, stream_entry[1])
    again = PostingWorker(sync_client, ledger, WorkerConfig(consumer="w2"))
    await asyncio.to_thread(run_until_caught_up, again, sync_client)
    assert again.stats.booked == 0 and again.stats.duplicates == 10
    assert ledger_truth(ledger) == redis_truth(sync_client)


async def test_a_poison_entry_is_dead_lettered_and_the_rest_continue(
    gateway: Gateway, sync_client: redis.Redis, ledger: Ledger
) -> None:
    await add_persons(gateway)
    sync_client.xgroup_create(keys.stream_key(5), GROUP, id="0", mkstream=True)
    sync_client.xadd(keys.stream_key(5), {"type": "settle", "sid": "S005-bad", "event": "{not json"})
    sync_client.xadd(keys.stream_key(5), {"type": "gift", "sid": "S005-odd", "event": "{}"})
    await settle_many(gateway, 20)
    worker = PostingWorker(sync_client, ledger, WorkerConfig(consumer="w1"))
    await asyncio.to_thread(run_until_caught_up, worker, sync_client)
    assert ledger_truth(ledger) == redis_truth(sync_client)
    dead = sync_client.xrange(DEADLETTER)
    assert [(d[1][b"f:sid"], b"reason" in d[1]) for d in dead] == [(b"S005-bad", True), (b"S005-odd", True)]
    assert b"unknown entry type 'gift'" in dead[1][1][b"reason"]
    assert worker.stats.dead_lettered == 2


async def test_database_unreachable_for_a_while_then_the_worker_catches_up(
    gateway: Gateway, sync_client: redis.Redis
) -> None:
    from .conftest import postgres_database
    from .tcp_proxy import TcpProxy

    for dsn in postgres_database():
        host_port = dsn.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        proxy = TcpProxy(host, int(port)).start()
        via_proxy = dsn.replace(host_port, f"127.0.0.1:{proxy.port}")
        direct = Ledger(dsn)
        await add_persons(gateway)
        worker = PostingWorker(
            sync_client, Ledger(via_proxy), WorkerConfig(consumer="w1", backoff_max_ms=300)
        )
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            await settle_many(gateway, 20)
            await wait_for(lambda: backlog(sync_client) == 0)
            proxy.cut()  # the database is unreachable
            await settle_many(gateway, 30, start=20)  # settling goes on: posting is asynchronous
            await asyncio.sleep(1.5)
            assert backlog(sync_client) == 30, "the backlog grows while the database is away"
            assert ledger_truth(direct)["settled"] == 20
            proxy.restore()  # it comes back: the worker catches up by itself
            await wait_for(lambda: backlog(sync_client) == 0, timeout_s=30)
        finally:
            stop.set()
            thread.join(10)
            proxy.cut()
        assert worker.stats.db_failures >= 1
        assert ledger_truth(direct) == redis_truth(sync_client)
        direct.close()


async def wait_for(condition: Any, timeout_s: float = 15, why: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time: {why() if why else ''}")
        await asyncio.sleep(0.05)


def start_worker(redis_url: str, dsn: str, consumer: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--redis", redis_url, "--ledger", dsn,
         "--consumer", consumer, "--batch-max", "20", "--claim-idle-ms", "300", "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()  # "medsettle worker ...": it is about to read its first batch
    return proc


async def steady_load(gateway: Gateway, stop: asyncio.Event) -> int:
    """Settles (and sometimes reverses) in small bursts until stopped, so kills land mid-batch."""
    done = 0
    while not stop.is_set():
        await settle_many(gateway, 10, start=done, reverse_every=9)
        done += 10
        await asyncio.sleep(0.02)
    return done


async def test_sigkill_mid_batch_many_times_under_load_loses_and_doubles_nothing(
    gateway: Gateway, redis_server: EmbeddedRedis, sync_client: redis.Redis, ledger_dsn: str
) -> None:
    await add_persons(gateway)
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(gateway, stop))
    kills_with_entries_in_hand = 0
    seen: list[int] = []
    for round_no in range(12):
        # alternate consumer names: a restart under the same name re-reads its own pending entries, a new
        # name finds a dead one's entries through XAUTOCLAIM
        proc = await asyncio.to_thread(start_worker, redis_server.url, ledger_dsn, f"w{round_no % 3}")
        await asyncio.sleep(0.05 * (round_no % 5))
        # most kills wait for entries delivered and not yet acknowledged, however busy the machine is
        deadline = time.monotonic() + 3
        while round_no % 4 and pending(sync_client) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.append(pending(sync_client))
        kills_with_entries_in_hand += seen[-1] > 0
    stop.set()
    settled = await load
    final = await asyncio.to_thread(start_worker, redis_server.url, ledger_dsn, "final")
    try:
        await wait_for(
            lambda: backlog(sync_client) == 0 and pending(sync_client) == 0,
            timeout_s=60,
            why=lambda: (
                f"backlog {backlog(sync_client)}, pending {pending(sync_client)}, "
                f"final worker {'running' if final.poll() is None else f'exited {final.returncode}'}"
            ),
        )
    finally:
        final.terminate()
        final.wait(timeout=30)
    report = await audit_redis(redis_server.url, ledger_dsn)
    assert report.differences == [] and report.settlements > 0, report.lines()
    ledger = Ledger(ledger_dsn)
    truth = redis_truth(sync_client)
    assert truth["settled"] == settled >= 100
    assert kills_with_entries_in_hand >= 3, f"the kills must land on entries delivered, not acked: {seen}"
    assert ledger_truth(ledger) == truth
    assert sync_client.xlen(DEADLETTER) == 0
    ledger.close()


def pending(r: redis.Redis) -> int:
    """Entries delivered to a worker and not yet acknowledged, over every partition, in one round trip
    (a kill right after it then lands on what it saw)."""
    pipe = r.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.xpending(keys.stream_key(p), GROUP)
    return sum(int(x["pending"]) for x in pipe.execute(raise_on_error=False) if isinstance(x, dict))
