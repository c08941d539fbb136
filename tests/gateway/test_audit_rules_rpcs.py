"""Pre-settlement audit rules end to end, over a real gRPC channel to a gateway on a real redis-server:
the demo city data with an `[audit]` section added to Chongqing's policy. A warning is returned by
PreSettle and Settle, stored with the settlement and counted per rule; an error (the blocking severity)
rejects the bill with AUDIT_BLOCKED (420) and writes nothing."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis
from prometheus_client import REGISTRY

from adapters.citydata_files import citydata_dir
from adapters.embedded_redis import EmbeddedRedis
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from .conftest import CARD, Terminal, error_of

pytestmark = pytest.mark.asyncio

AUDIT = """
[audit]
block = ["error"]

[[audit.rules]]
id = "CQ-DX-AMLODIPINE"
kind = "diagnosis"
severity = "warning"
codes = ["D000012"]
diagnoses = ["I10", "I11"]

[[audit.rules]]
id = "CQ-SEX-T000006"
kind = "sex"
severity = "error"
codes = ["T000006"]
sex = "F"
"""


@pytest_asyncio.fixture
async def audited_gateway(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    data = tmp_path / "citydata"
    shutil.copytree(citydata_dir(), data)
    policy = data / "policies" / "500000-chongqing.toml"
    text = policy.read_text(encoding="utf-8")
    head, _, tail = text.partition("[tiers]")  # top-level tables go before the first table
    policy.write_text(head + AUDIT + "\n[tiers]" + tail, encoding="utf-8")
    config = Config(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        health_interval_ms=100,
        tls=None,
        index_key=INDEX_KEY,
        citydata=data,
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def stub(audited_gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{audited_gateway.port}") as channel:
        yield pb_grpc.SettlementServiceStub(channel)


def request(
    terminal: Terminal, lines: list[tuple[str, int, int]], diagnoses: list[str], message_id: str | None = None
) -> Any:
    req = terminal.settle(lines, visit=pb.VISIT_TYPE_OUTPATIENT, message_id=message_id)
    req.bill.diagnosis_codes.extend(diagnoses)
    return req


def hits(rule: str, severity: str, outcome: str) -> float:
    labels = {"region": "500000", "rule": rule, "severity": severity, "outcome": outcome}
    return REGISTRY.get_sample_value("medsettle_audit_flags_total", labels) or 0.0


def flags(split: Any) -> list[tuple[str, str, int, int, str]]:
    return [(f.rule_id, f.severity, f.line_no, f.amount_fen, f.kind) for f in split.audit_flags]


async def test_a_warning_is_returned_by_presettle_and_settle_and_stored(
    stub: Any, terminal: Terminal
) -> None:
    # amlodipine (D000012, 2 boxes at 23.50) on a bill diagnosed J06.9 (a cold): paid only for I10/I11
    expected = [("CQ-DX-AMLODIPINE", "warning", 2, 4_700, "diagnosis")]
    lines = [("T000003", 3_500, 1), ("D000012", 2_350, 2)]
    before = hits("CQ-DX-AMLODIPINE", "warning", "flagged")

    pre = await stub.PreSettle(request(terminal, lines, ["J06.9"]))
    assert flags(pre.split) == expected
    assert hits("CQ-DX-AMLODIPINE", "warning", "flagged") == before  # a pre-settlement commits nothing

    settle = request(terminal, lines, ["J06.9"])
    settled = await stub.Settle(settle)
    assert flags(settled.split) == expected
    assert settled.split.total_fen == 8_200  # the flag only flags: the bill settled
    assert hits("CQ-DX-AMLODIPINE", "warning", "flagged") == before + 1

    got = await stub.GetSettlement(
        pb.GetSettlementRequest(
            envelope=terminal.envelope(), original_message_id=settle.envelope.message_id,
            person=pb.PersonRef(card_no=CARD),
        )
    )  # fmt: skip
    assert flags(got.settlement.split) == expected  # stored with the settlement

    fine = await stub.PreSettle(request(terminal, lines, ["J06.9", "I10"]))
    assert flags(fine.split) == []


async def test_a_blocking_rule_rejects_and_writes_nothing(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    before_keys = {k: sync_redis.dump(k) for k in sync_redis.keys("*")}
    blocked_before = hits("CQ-SEX-T000006", "error", "blocked")
    message_id = "H50010300001202606151030009901"
    bad = request(terminal, [("T000003", 3_500, 1), ("T000006", 2_000, 1)], ["I10"], message_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Settle(bad)
    code, info = error_of(caught.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert (info.reason, info.metadata["code"], info.metadata["line_no"]) == ("AUDIT_BLOCKED", "420", "2")
    assert "CQ-SEX-T000006" in caught.value.details()
    assert hits("CQ-SEX-T000006", "error", "blocked") == blocked_before + 1
    after_keys = {k: sync_redis.dump(k) for k in sync_redis.keys("*")}
    assert after_keys == before_keys  # no settlement, no accumulator, no message record

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetSettlement(
            pb.GetSettlementRequest(
                envelope=terminal.envelope(),
                original_message_id=message_id,
                person=pb.PersonRef(card_no=CARD),
            )
        )
    assert error_of(missing.value)[1].reason == "SETTLEMENT_NOT_FOUND"
    # the corrected bill settles under the same message id: the rejection recorded nothing
    fixed = request(terminal, [("T000003", 3_500, 1)], ["I10"], message_id)
    assert (await stub.Settle(fixed)).settlement_id


async def test_too_many_diagnosis_codes_name_the_field(stub: Any, terminal: Terminal) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PreSettle(request(terminal, [("T000003", 3_500, 1)], [f"I{i:02d}" for i in range(21)]))
    code, bad = error_of(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.field_violations] == ["bill.diagnosis_codes"]
