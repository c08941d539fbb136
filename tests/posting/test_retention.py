"""Retention on a real redis-server and real ledgers: message records expire after the idempotency window
(each resend renews it), settlements of plan-years past the correction window leave Redis once the
ledger holds them, and are still answered from the ledger, byte for byte; nothing leaves Redis before the
ledger has it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import pytest_asyncio
import redis

from adapters import redis_keys as keys
from adapters import settlement_records as rec
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.audit import audit_redis
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.posting.retention import RetentionConfig, SweepStats
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import pb, pb_grpc
from gateway.rebuild import rebuild
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY
from ..gateway.conftest import CARD, HOSPITAL, Terminal, error_of
from ..redis_state import accumulators, live
from .test_worker import run_until_caught_up, wait_for

pytestmark = pytest.mark.asyncio
ZONE = ZoneInfo("Asia/Shanghai")
LINES = [("T000001", 1000, 1), ("T000006", 2000, 1), ("D000004", 350, 10)]  # demo catalog items


class Clock:
    """The gateway's and the worker's clock, moved by the test (a year of retention in a second)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def today(self) -> date:
        return self.at.date()


@pytest.fixture
def terminal() -> Terminal:
    return Terminal()


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 6, 15, 10, 30, tzinfo=ZONE))


@pytest_asyncio.fixture
async def archived_gateway(
    redis_server: EmbeddedRedis, ledger_dsn: str, clock: Clock
) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0", redis_url=redis_server.url, health_interval_ms=100, tls=None,
        index_key=INDEX_KEY, ledger_dsn=ledger_dsn,
    )  # fmt: skip
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=clock.now).start()
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def stub(archived_gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{archived_gateway.port}") as channel:
        yield pb_grpc.SettlementServiceStub(channel)


def worker_of(r: redis.Redis, ledger: Ledger, clock: Clock) -> PostingWorker:
    config = WorkerConfig(consumer="w1", retention=RetentionConfig(sweep_every_s=0))
    return PostingWorker(r, ledger, config, today=clock.today)


def settlement_keys(r: redis.Redis) -> list[bytes]:
    return list(r.scan_iter(match="ms:{p*}:stl:*"))


def outpatient(terminal: Terminal, visit_date: str, message_id: str | None = None) -> Any:
    request = terminal.settle(LINES, visit=pb.VISIT_TYPE_OUTPATIENT, message_id=message_id)
    request.bill.visit_date = visit_date
    return request


async def test_message_records_and_claims_expire_and_each_resend_renews_them(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    request = outpatient(terminal, "2026-06-15")
    first = await stub.Settle(request)
    pid = first.person_id
    idem = keys.idem_key(keys.partition_of(pid), HOSPITAL, request.envelope.message_id)
    claim = keys.claim_key(HOSPITAL, request.envelope.message_id)
    week_ms = 7 * 86_400_000
    assert week_ms - 60_000 < sync_redis.pttl(idem) <= week_ms
    assert week_ms - 60_000 < sync_redis.pttl(claim) <= week_ms
    sync_redis.pexpire(idem, 5_000)  # as if the week were nearly over
    again = await stub.Settle(request)  # a resend: the original answer, and a week more
    assert again.SerializeToString() == first.SerializeToString()
    assert sync_redis.pttl(idem) > week_ms - 60_000


async def test_a_past_plan_year_leaves_redis_and_is_answered_from_the_ledger(
    archived_gateway: Gateway,
    stub: Any,
    terminal: Terminal,
    sync_redis: redis.Redis,
    ledger: Ledger,
    clock: Clock,
    redis_server: EmbeddedRedis,
    ledger_dsn: str,
) -> None:
    kept = outpatient(terminal, "2026-06-15")
    reversed_ = outpatient(terminal, "2026-06-16")
    settled = await stub.Settle(kept)
    other = await stub.Settle(reversed_)
    reversal = await stub.Reverse(
        pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=other.settlement_id)
    )
    worker = worker_of(sync_redis, ledger, clock)
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    before = len(settlement_keys(sync_redis))
    assert before == 2

    clock.at = datetime(2027, 12, 20, 9, 0, tzinfo=ZONE)  # 2026 is still the previous plan-year
    assert worker.retention is not None and worker.retention.sweep().removed == 0
    clock.at = datetime(2028, 1, 10, 9, 0, tzinfo=ZONE)  # 2026 has left the window (and the grace)
    swept = worker.retention.sweep()
    assert (swept.removed, swept.not_booked) == (2, 0)
    assert settlement_keys(sync_redis) == []
    assert list(sync_redis.scan_iter(match=f"ms:{{p*}}:year:{settled.person_id}:2026")) == []
    assert list(sync_redis.scan_iter(match="ms:{p*}:plan-year:2026")) == []

    # the idempotency records expired long ago (a week after their last use)
    for key in sync_redis.scan_iter(match="ms:{p*}:idem:*"):
        sync_redis.delete(key)
    found = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    )
    assert found.settlement.SerializeToString() == settled.SerializeToString()
    assert found.status == pb.SETTLEMENT_STATUS_SETTLED
    by_message = await stub.GetSettlement(
        pb.GetSettlementRequest(
            envelope=terminal.envelope(),
            original_message_id=kept.envelope.message_id,
            person=pb.PersonRef(card_no=CARD),
        )
    )
    assert by_message.settlement.settlement_id == settled.settlement_id
    gone = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=other.settlement_id)
    )
    assert gone.status == pb.SETTLEMENT_STATUS_REVERSED
    assert gone.reversal.SerializeToString() == reversal.SerializeToString()

    # a reversal of the reversed one answers as before; of the other, a clear refusal, nothing written
    again = await stub.Reverse(
        pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=other.settlement_id)
    )
    assert again.SerializeToString() == reversal.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Reverse(
            pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
        )
    code, info = error_of(refused.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "SETTLEMENT_ARCHIVED"
    # 2601 by the original message id, whose record has expired: never a void of a settled message
    with pytest.raises(grpc.aio.AioRpcError) as by_omsgid:
        await stub.Reverse(
            pb.ReverseRequest(
                envelope=terminal.envelope(),
                original_message_id=kept.envelope.message_id,
                person=pb.PersonRef(card_no=CARD),
            )
        )
    assert error_of(by_omsgid.value)[1].reason == "SETTLEMENT_ARCHIVED"
    assert settlement_keys(sync_redis) == []

    # and a bill of the closed plan-year is refused: its person-year state has left Redis
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await stub.Settle(outpatient(terminal, "2026-12-30"))
    assert error_of(closed.value)[1].reason == "PLAN_YEAR_CLOSED"
    assert sync_redis.xlen(keys.stream_key(keys.partition_of(settled.person_id))) == 0

    # the person settles on in 2028; the auditor balances the account (what left Redis paid from it is
    # the state's archived total now) and checks the ledger's entries against its records of what left
    now = await stub.Settle(outpatient(terminal, "2028-01-10"))
    assert now.split.account_fen > 0
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    audited = await audit_redis(redis_server.url, ledger_dsn)
    assert (audited.differences, audited.archived, audited.settlements) == ([], 2, 1)
    sync_redis.hset(keys.state_key(now.person_id), "arch", "0")  # as if the archived payment were lost
    assert any("personal account" in d for d in (await audit_redis(redis_server.url, ledger_dsn)).differences)


async def test_nothing_leaves_redis_before_the_ledger_holds_it(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, ledger: Ledger, clock: Clock
) -> None:
    await stub.Settle(outpatient(terminal, "2026-06-15"))
    worker = worker_of(sync_redis, ledger, clock)  # never run: the entry is still in its stream
    clock.at = datetime(2028, 3, 1, tzinfo=ZONE)
    assert worker.retention is not None
    swept = worker.retention.sweep()
    assert (swept.removed, swept.not_booked) == (0, 1)
    assert len(settlement_keys(sync_redis)) == 1
    stop = threading.Event()  # booked now, then swept when the worker is idle (not the same instant)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        await wait_for(lambda: settlement_keys(sync_redis) == [], 30, lambda: worker.stats)
    finally:
        stop.set()
        thread.join(10)


async def test_a_settlement_booked_before_records_existed_is_archived_from_redis(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, ledger: Ledger, clock: Clock
) -> None:
    settled = await stub.Settle(outpatient(terminal, "2026-06-15"))
    stream = keys.stream_key(keys.partition_of(settled.person_id))
    [(entry_id, fields)] = sync_redis.xrange(stream)
    sync_redis.xdel(stream, entry_id)  # the entry as the first release wrote it: no commit record
    sync_redis.xadd(stream, {k: v for k, v in fields.items() if k != b"rec"})
    worker = worker_of(sync_redis, ledger, clock)
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    assert ledger.archived([settled.settlement_id]) == set()
    clock.at = datetime(2028, 3, 1, tzinfo=ZONE)
    assert worker.retention is not None
    swept = worker.retention.sweep()
    assert (swept.removed, swept.archived_from_redis) == (1, 1)
    found = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    )
    assert found.settlement.SerializeToString() == settled.SerializeToString()


# ---------------------------------------------------------------- retention by days


async def test_settlements_older_than_the_days_leave_redis_within_their_plan_year(
    archived_gateway: Gateway,
    stub: Any,
    terminal: Terminal,
    sync_redis: redis.Redis,
    ledger: Ledger,
    clock: Clock,
    redis_server: EmbeddedRedis,
    ledger_dsn: str,
) -> None:
    async def settle_on(day: str) -> Any:
        clock.at = datetime.fromisoformat(f"{day}T10:00:00+08:00")
        return await stub.Settle(outpatient(terminal, day))

    march_20, march_28, march_29 = [await settle_on(d) for d in ("2026-03-20", "2026-03-28", "2026-03-29")]
    reversal = await stub.Reverse(
        pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=march_29.settlement_id)
    )
    june = await settle_on("2026-06-15")
    pid = june.person_id
    config = WorkerConfig(consumer="w1", retention=RetentionConfig(sweep_every_s=0, settlement_days=90))
    worker = PostingWorker(sync_redis, ledger, config, today=clock.today)
    assert worker.retention is not None
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    used = accumulators(sync_redis, pid)
    balance = sync_redis.hget(keys.state_key(pid), "bal")

    clock.at = datetime(2026, 7, 1, 9, 0, tzinfo=ZONE)  # 90 days back: 2 April (booked on 15 June: 17 March)
    swept = worker.retention.sweep()
    assert (swept.retired, swept.removed, swept.not_booked) == (3, 3, 0)
    assert [k.decode().rsplit(":", 1)[1] for k in settlement_keys(sync_redis)] == [june.settlement_id]
    # the plan-year stays, with what the three added moved from the live list to its retired totals
    assert live(sync_redis, pid) == [june.settlement_id]
    assert accumulators(sync_redis, pid) == used
    retired = {
        k.decode().rsplit("|", 1)[1]: int(v)
        for k, v in sync_redis.hgetall(keys.year_key(pid, 2026)).items()
        if b"|r|" in k
    }
    assert retired and all(0 < retired[name] <= used[name] for name in retired)
    assert sync_redis.hget(keys.state_key(pid), "bal") == balance
    assert int(sync_redis.hget(keys.state_key(pid), "arch") or 0) == (
        march_20.split.account_fen + march_28.split.account_fen
    )  # what the retired (not reversed) ones paid from the account
    assert worker.retention.sweep().retired == 0  # nothing twice

    # answered from the ledger, byte for byte; corrected no more at the gateway; June is, as before
    found = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=march_20.settlement_id)
    )
    assert found.settlement.SerializeToString() == march_20.SerializeToString()
    gone = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=march_29.settlement_id)
    )
    assert gone.reversal.SerializeToString() == reversal.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Reverse(
            pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=march_28.settlement_id)
        )
    assert error_of(refused.value)[1].reason == "SETTLEMENT_ARCHIVED"
    await stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=june.settlement_id))
    after = await stub.Settle(outpatient(terminal, "2026-07-01"))  # splits on the same accumulators
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    audited = await audit_redis(redis_server.url, ledger_dsn)
    assert (audited.differences, audited.archived, audited.settlements) == ([], 3, 1)
    assert after.split.total_fen == june.split.total_fen

    # a forced rebuild from the ledger brings the retired ones back live, without their retired totals
    client = redis_client(redis_server.url, Config())
    try:
        export = json.loads((Config().citydata / "persons.json").read_text(encoding="utf-8"))
        report = await rebuild(client, ledger, export, INDEX, clock.at, force=True)
    finally:
        await client.aclose()
    assert report.problems == []
    assert live(sync_redis, pid) == [march_20.settlement_id, march_28.settlement_id, after.settlement_id]
    assert not [k for k in sync_redis.hkeys(keys.year_key(pid, 2026)) if b"|r|" in k]
    assert sync_redis.hget(keys.state_key(pid), "arch") is None
    audited = await audit_redis(redis_server.url, ledger_dsn)
    assert (audited.differences, audited.settlements) == ([], 3)


async def test_an_unbooked_settlement_holds_back_the_ones_settled_after_it(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, ledger: Ledger, clock: Clock
) -> None:
    clock.at = datetime(2026, 3, 2, 10, tzinfo=ZONE)
    first = await stub.Settle(outpatient(terminal, "2026-03-02"))  # never booked: still in its stream
    clock.at = datetime(2026, 3, 3, 10, tzinfo=ZONE)
    second = await stub.Settle(outpatient(terminal, "2026-03-03"))
    config = WorkerConfig(consumer="w1", retention=RetentionConfig(sweep_every_s=0, settlement_days=90))
    worker = PostingWorker(sync_redis, ledger, config, today=clock.today)
    assert worker.retention is not None
    clock.at = datetime(2026, 7, 1, 9, tzinfo=ZONE)
    swept = worker.retention.sweep()
    # the first is not in the ledger, and the second may not retire before it (only a prefix does)
    assert (swept.retired, swept.not_booked) == (0, 2)
    assert live(sync_redis, first.person_id) == [first.settlement_id, second.settlement_id]
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)  # booked (and maybe swept when idle)
    worker.retention.sweep()
    assert settlement_keys(sync_redis) == [] and live(sync_redis, first.person_id) == []
    # the plan-year stays while it is in the window; when it leaves, its year hash goes with it, though
    # none of its settlements is left in the index to name the person (the index keeps the person)
    year_key = keys.year_key(first.person_id, 2026)
    index = keys.plan_year_index_key(keys.partition_of(first.person_id), 2026)
    assert sync_redis.exists(year_key) and sync_redis.smembers(index) == {f"P:{first.person_id}".encode()}
    clock.at = datetime(2028, 1, 10, 9, tzinfo=ZONE)
    worker.retention.sweep()
    assert not sync_redis.exists(year_key) and not sync_redis.exists(index)


async def test_a_settlement_changed_within_the_idempotency_window_stays_and_its_resend_is_answered(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, ledger: Ledger, clock: Clock
) -> None:
    clock.at = datetime(2026, 3, 1, 10, tzinfo=ZONE)
    settled = await stub.Settle(outpatient(terminal, "2026-03-01"))
    clock.at = datetime(2026, 6, 29, 10, tzinfo=ZONE)  # reversed long after, two days before the sweep
    request = pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    reversal = await stub.Reverse(request)
    config = WorkerConfig(consumer="w1", retention=RetentionConfig(sweep_every_s=3600, settlement_days=90))
    worker = PostingWorker(sync_redis, ledger, config, today=clock.today)
    assert worker.retention is not None
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    clock.at = datetime(2026, 7, 1, 9, tzinfo=ZONE)
    assert worker.retention.sweep().retired == 0  # settled 122 days ago, but reversed 2 days ago
    assert (await stub.Reverse(request)).SerializeToString() == reversal.SerializeToString()
    clock.at = datetime(2026, 7, 7, 9, tzinfo=ZONE)  # the reversal's message record has expired
    assert worker.retention.sweep().retired == 1 and settlement_keys(sync_redis) == []


async def test_a_settlement_corrected_after_the_ledger_was_asked_is_not_retired(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, ledger: Ledger, clock: Clock
) -> None:
    clock.at = datetime(2026, 3, 1, 10, tzinfo=ZONE)
    settled = await stub.Settle(outpatient(terminal, "2026-03-01"))
    config = WorkerConfig(consumer="w1", retention=RetentionConfig(sweep_every_s=3600, settlement_days=90))
    worker = PostingWorker(sync_redis, ledger, config, today=clock.today)
    assert worker.retention is not None
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    key = keys.settlement_key(settled.settlement_id)
    checked = rec.settlement_from(settled.settlement_id, sync_redis.hgetall(key))  # what the ledger holds
    await stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id))
    # the sweep's commit comes with what it checked before the reversal: refused, nothing deleted
    stats = SweepStats()
    index = keys.plan_year_index_key(keys.partition_of(settled.person_id), 2026)
    worker.retention.retire_person(settled.person_id, 2026, index, [checked], stats)
    assert (stats.retired, stats.not_booked) == (0, 1)
    assert sync_redis.exists(key) and sync_redis.hget(key, "status") == b"reversed"
