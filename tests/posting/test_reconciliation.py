"""Reconciliation (3201/3202) and statements through the gateway's LedgerService, on a real ledger fed
by the posting worker: a planted one-sided transaction and a planted amount difference are found, and
statements add up to the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
import pytest
import pytest_asyncio

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.posting import statements
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from ..gateway.conftest import HOSPITAL
from .test_worker import add_persons, run_until_caught_up, settle_many

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def ledger_gateway(redis_server: EmbeddedRedis, ledger_dsn: str) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0", redis_url=redis_server.url, ledger_dsn=ledger_dsn, index_key=INDEX_KEY
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()


async def posted(gw: Gateway, redis_server: EmbeddedRedis, ledger_dsn: str, count: int) -> Ledger:
    await add_persons(gw)
    await settle_many(gw, count, reverse_every=5)
    ledger = Ledger(ledger_dsn)
    sync = sync_client(redis_server.url)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    return ledger


def envelope(message_id: str = "REC1") -> Any:
    return pb.Envelope(institution_code=HOSPITAL, terminal_id="T", operator_id="op", message_id=message_id)


async def test_reconciliation_finds_one_sided_and_differing_items(
    ledger_gateway: Gateway, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    ledger = await posted(ledger_gateway, redis_server, ledger_dsn, 40)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ledger_gateway.port}") as channel:
        stub = pb_grpc.LedgerServiceStub(channel)
        # 3201: the institution's totals, taken from its own records: they match
        ours = await stub.Reconcile(
            pb.ReconcileRequest(envelope=envelope(), date_from="2026-06-15", date_to="2026-06-15")
        )
        agreed = await stub.Reconcile(
            pb.ReconcileRequest(
                envelope=envelope(), date_from="2026-06-15", date_to="2026-06-15", totals=ours.gateway_totals
            )
        )
        assert agreed.matched and agreed.gateway_totals.count == 16  # 20 settled at this hospital, 4 reversed
        assert datetime.fromisoformat(agreed.posted_through) >= NOW

        # 3202: the institution lost one settlement (a one-sided transaction), recorded another with a
        # different amount, and has one the gateway never settled
        items = [
            pb.ReconcileItem(message_id=m, total_fen=t, fund_total_fen=f, account_fen=a)
            for m, sid, t, f, a in ledger.query(
                "SELECT message_id, settlement_id, total_fen, fund_total_fen, account_fen FROM journal"
                " WHERE institution = ? AND kind = 'settle' AND settlement_id NOT IN"
                " (SELECT settlement_id FROM journal WHERE kind = 'reverse') ORDER BY message_id",
                [HOSPITAL],
            )
        ]
        lost, changed = items[0].message_id, items[1].message_id
        items[1].total_fen += 100
        mine = [*items[1:], pb.ReconcileItem(message_id="NEVER-SETTLED", total_fen=500)]
        detail = await stub.Reconcile(
            pb.ReconcileRequest(envelope=envelope(), date_from="2026-06-01", date_to="2026-06-30", items=mine)
        )
    by_id = {i.message_id: i for i in detail.items}
    assert not detail.matched
    assert by_id[lost].status == pb.ITEM_STATUS_MISSING_AT_INSTITUTION
    assert by_id[lost].settlement_id and "2601" in by_id[lost].action
    assert by_id[changed].status == pb.ITEM_STATUS_AMOUNTS_DIFFER
    assert by_id[changed].gateway.total_fen + 100 == by_id[changed].institution.total_fen
    assert by_id["NEVER-SETTLED"].status == pb.ITEM_STATUS_MISSING_ON_GATEWAY
    assert sum(i.status == pb.ITEM_STATUS_MATCHED for i in detail.items) == len(items) - 2
    ledger.close()


async def test_statements_add_up_to_the_ledger(
    ledger_gateway: Gateway, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    ledger = await posted(ledger_gateway, redis_server, ledger_dsn, 30)
    rows = statements.institution_statements(ledger, "2026-06")
    ((count, total, funds, account, cash),) = ledger.query(
        "SELECT SUM(CASE WHEN kind = 'settle' THEN 1 ELSE -1 END), SUM(total_fen), SUM(fund_total_fen),"
        " SUM(account_fen), SUM(cash_fen) FROM journal"
    )
    assert sum(r.settlements for r in rows) == int(count) == 24  # 30 settled, 6 reversed
    assert sum(r.total_fen for r in rows) == int(total)
    assert sum(r.fund_total_fen for r in rows) == int(funds) == sum(sum(r.funds.values()) for r in rows)
    assert sum(r.account_fen + r.cash_fen for r in rows) == int(account) + int(cash)
    spend = statements.fund_spend(ledger, "2026-06")
    assert sum(s.amount_fen for s in spend) == int(funds)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ledger_gateway.port}") as channel:
        reply = await pb_grpc.LedgerServiceStub(channel).GetStatement(
            pb.StatementRequest(envelope=envelope(), month="2026-06")
        )
    mine = next(r for r in rows if r.institution == HOSPITAL)
    assert (reply.totals.count, reply.totals.total_fen) == (mine.settlements, mine.total_fen)
    assert {f.fund_code: f.amount_fen for f in reply.funds} == mine.funds
    ledger.close()


async def test_bad_period_is_invalid_argument(ledger_gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ledger_gateway.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.LedgerServiceStub(channel).Reconcile(
                pb.ReconcileRequest(envelope=envelope(), date_from="2026-06-30", date_to="2026-06-01")
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
