"""Dead letters are handled, not forgotten: a settlement the worker could not book holds posted_through at
its time (Reconcile never tells the hospital the gateway did not settle it), stays counted in the
unhandled gauge read from Redis, and is listed, shown, replayed or discarded with `medsettle deadletters`,
each action in the audit log with who did it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.ops.backlog import BacklogCollector
from gateway.posting import deadletters as dl
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from ..gateway.conftest import HOSPITAL
from .test_worker import add_persons, run_until_caught_up, settle_many

pytestmark = pytest.mark.asyncio
CLI = [sys.executable, "-m", "gateway.cli"]


@pytest_asyncio.fixture
async def sqlite_gateway(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0", redis_url=redis_server.url, ledger_dsn=sqlite_dsn(tmp_path), index_key=INDEX_KEY
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()


def sqlite_dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def refuse_in_database(tmp_path: Path, settlement_id: str) -> None:
    """What a database constraint the entry breaks looks like to the worker: the insert is refused."""
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute(
            f"CREATE TRIGGER refuse_one BEFORE INSERT ON journal WHEN NEW.settlement_id = '{settlement_id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
        )


def accept_again(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("DROP TRIGGER refuse_one")


def book(r: redis.Redis, dsn: str) -> PostingWorker:
    worker = PostingWorker(r, Ledger(dsn), WorkerConfig(consumer="w", attempts_max=2, block_ms=100))
    run_until_caught_up(worker, r)
    return worker


def scrape(r: redis.Redis) -> dict[str, float]:
    """The backlog gauges as the supervisor exports them, unlabelled ones by name."""
    out = {}
    for family in BacklogCollector(r).collect():
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "deadletters", *args], capture_output=True, text=True, timeout=60)


async def reconcile_item(gw: Gateway, message_id: str, amounts: Any) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        reply = await pb_grpc.LedgerServiceStub(channel).Reconcile(
            pb.ReconcileRequest(
                envelope=pb.Envelope(institution_code=HOSPITAL, terminal_id="T", message_id="R"),
                date_from="2026-06-15", date_to="2026-06-15",
                items=[pb.ReconcileItem(message_id=message_id, **amounts)],
            )
        )  # fmt: skip
    return reply


async def test_a_dead_letter_holds_posted_through_until_replayed_and_booked(
    sqlite_gateway: Gateway, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    gw, r, dsn = sqlite_gateway, sync_client(redis_server.url), sqlite_dsn(tmp_path)
    await add_persons(gw)
    Ledger(dsn).migrate()
    sids = await settle_many(gw, 6)
    stuck = sids[1]  # settled at HOSPITAL (odd index), message MSG00000001
    stl = r.hgetall(f"ms:{{p{int(stuck[1:4]):03d}}}:stl:{stuck}")
    answer = pb.SettleResponse.FromString(stl[b"resp"])
    refuse_in_database(tmp_path, stuck)
    worker = await asyncio.to_thread(book, r, dsn)
    assert worker.stats.dead_lettered == 1 and worker.stats.booked == 5

    (letter,) = dl.unhandled(r)
    assert letter.settlement_id == stuck and "refused for the test" in letter.reason
    held_at = datetime.fromtimestamp(letter.t0_ms / 1000, NOW.tzinfo).isoformat(timespec="milliseconds")
    amounts = {
        "total_fen": answer.split.total_fen, "fund_total_fen": answer.split.fund_total_fen,
        "account_fen": answer.split.account_fen,
    }  # fmt: skip
    reply = await reconcile_item(gw, "MSG00000001", amounts)
    # the watermark is held at the dead letter's commit, and the hospital is told not to collect again
    assert reply.posted_through == held_at
    item = {i.message_id: i for i in reply.items}["MSG00000001"]
    assert item.status == pb.ITEM_STATUS_MISSING_ON_GATEWAY
    assert "settled this message" in item.action and "do not collect" in item.action
    gauges = scrape(r)
    assert gauges["medsettle_posting_dead_letters_unhandled"] == 1
    assert gauges["medsettle_posting_held_entries"] == 1
    assert gauges["medsettle_posting_lag_seconds"] > 0  # the backlog is empty; the dead letter is not booked

    audit = tmp_path / "ops-audit.log"
    common = ["--redis", redis_server.url, "--audit-log", str(audit), "--operator", "alice"]
    listed = cli("list", *common)
    assert listed.returncode == 0, listed.stderr
    assert letter.id in listed.stdout and stuck in listed.stdout and "refused for the test" in listed.stdout
    shown = cli("show", letter.id, *common)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["event"]["sid"] == stuck

    accept_again(tmp_path)  # the cause is fixed; the operator replays
    replayed = cli("replay", letter.id, *common)
    assert replayed.returncode == 0, replayed.stderr
    assert dl.unhandled(r) == [] and dl.summary(r).held == 1, "held until the worker books it again"
    assert (await reconcile_item(gw, "MSG00000001", amounts)).posted_through == held_at
    again = await asyncio.to_thread(book, r, dsn)
    assert again.stats.booked == 1 and again.stats.dead_lettered == 0
    assert dl.summary(r) == dl.Summary(0, 0, None)
    after = await reconcile_item(gw, "MSG00000001", amounts)
    assert after.posted_through == NOW.isoformat(timespec="milliseconds")  # nothing unbooked: now
    assert {i.message_id: i for i in after.items}["MSG00000001"].status == pb.ITEM_STATUS_MATCHED
    assert scrape(r)["medsettle_posting_dead_letters_unhandled"] == 0
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["deadletters_list", "deadletters_show", "deadletters_replay"]
    assert all(x["operator"].startswith("alice@") for x in lines)
    assert lines[2]["settlement_id"] == stuck and lines[2]["dead_letter"] == letter.id
    (record,) = dl.handled(r)
    assert record["action"] == "replay" and record["operator"].startswith("alice@")


async def test_a_discard_needs_a_reason_and_records_who(
    sqlite_gateway: Gateway, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    gw, r, dsn = sqlite_gateway, sync_client(redis_server.url), sqlite_dsn(tmp_path)
    await add_persons(gw)
    Ledger(dsn).migrate()
    sids = await settle_many(gw, 3)
    refuse_in_database(tmp_path, sids[0])
    await asyncio.to_thread(book, r, dsn)
    (letter,) = dl.unhandled(r)
    audit = tmp_path / "ops-audit.log"
    common = ["--redis", redis_server.url, "--audit-log", str(audit), "--operator", "bob"]
    refused = cli("discard", letter.id, *common)
    assert refused.returncode == 2 and "--reason" in refused.stderr
    assert dl.summary(r).unhandled == 1
    done = cli("discard", letter.id, *common, "--reason", "booked by hand in the ledger, ticket 4711")
    assert done.returncode == 0, done.stderr
    assert dl.summary(r) == dl.Summary(0, 0, None)
    assert scrape(r)["medsettle_posting_lag_seconds"] == 0
    (record,) = dl.handled(r)
    assert record["action"] == "discard" and record["reason"] == "booked by hand in the ledger, ticket 4711"
    assert record["operator"].startswith("bob@")
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    assert line["event"] == "deadletters_discard" and line["reason"].endswith("ticket 4711")
    assert cli("discard", letter.id, *common, "--reason", "again").returncode == 1  # nothing left to discard
