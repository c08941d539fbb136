"""Per-disease payment end to end: Chongqing's policy with a per-disease rule added (the demo city data
copied), a stay settled over a real gRPC channel on a real redis-server at the quota, booked by the
posting worker into the ledger (SQLite and PostgreSQL) as what the fund owes the hospital under it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from adapters.citydata_files import citydata_dir
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.posting import statements
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import pb_grpc
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from ..gateway.conftest import HOSPITAL, PERSON, Terminal
from ..redis_state import accumulators
from .test_worker import run_until_caught_up

pytestmark = pytest.mark.asyncio

RULE = """
[[plans.inpatient.per_disease]]
name = "appendicitis"
diagnoses = ["K35"]
fund_fen = 600000
personal_fen = 150000
"""


@pytest_asyncio.fixture
async def gateway_with_rule(
    redis_server: EmbeddedRedis, ledger_dsn: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    data = tmp_path / "citydata"
    shutil.copytree(citydata_dir(), data)
    policy = data / "policies" / "500000-chongqing.toml"
    text = policy.read_text(encoding="utf-8")
    anchor = "[plans.special]                            # 门诊特殊疾病"
    assert anchor in text  # the rule goes into the employee plan's inpatient benefit
    policy.write_text(text.replace(anchor, RULE + "\n" + anchor, 1), encoding="utf-8")
    config = Config(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        ledger_dsn=ledger_dsn,
        index_key=INDEX_KEY,
        citydata=data,
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()


async def test_a_stay_is_settled_at_the_quota_and_booked_as_the_funds_debt(
    gateway_with_rule: Gateway, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    terminal = Terminal()
    request = terminal.settle([("T000006", 2_000, 400)])  # an 8,000.00 stay
    request.bill.diagnosis_codes.append("K35.8")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_with_rule.port}") as channel:
        settled = await pb_grpc.SettlementServiceStub(channel).Settle(request)
    s = settled.split
    # fund 6,000.00; the person 1,500.00 (the personal account pays it: balance 4,255.00); the hospital
    # bears 500.00
    assert (s.per_disease, s.total_fen, s.fund_total_fen, s.institution_fen) == (
        "appendicitis",
        800_000,
        600_000,
        50_000,
    )
    assert (s.account_fen, s.cash_fen) == (150_000, 0)
    assert "PER_DISEASE" in s.flags
    sync = sync_client(redis_server.url)
    assert accumulators(sync, PERSON).get("fund.per_disease") == 600_000

    ledger = Ledger(ledger_dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    (month,) = statements.institution_statements(ledger, "2026-06", HOSPITAL)
    assert (month.total_fen, month.funds, month.account_fen, month.cash_fen) == (
        750_000,
        {"310100": 600_000},
        150_000,
        0,
    )
