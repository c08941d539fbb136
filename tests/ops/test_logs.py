"""Logs: one JSON line per request with what an operator needs to find it, an audit line per settlement
and reversal, and no ID number, card number or name in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gateway import logs
from gateway.protos import pb

from ..gateway.conftest import CARD, LOST_CARD, Terminal
from ..gateway.test_settlement_rpcs import STAY

pytestmark = pytest.mark.asyncio
SECRETS = (CARD, LOST_CARD, "500103197803127019", "张伟")  # cards, the demo person's ID number and name


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_one_line_per_request_and_an_audit_line_per_settlement(
    stub: Any, terminal: Terminal, captured: io.StringIO
) -> None:
    settle = terminal.settle(STAY)
    settled = await stub.Settle(settle)
    await stub.Settle(settle)  # a resend
    await stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=LOST_CARD))
        )
    records = lines(captured)
    requests = [r for r in records if r["logger"] == "medsettle.request"]
    assert [(r["rpc"], r["outcome"]) for r in requests] == [
        ("Settle", "OK"), ("Settle", "OK"), ("Reverse", "OK"), ("QueryEligibility", "FAILED_PRECONDITION"),
    ]  # fmt: skip
    first = requests[0]
    assert first["institution"] == settle.envelope.institution_code
    assert first["message_id"] == settle.envelope.message_id
    assert first["settlement_id"] == settled.settlement_id and first["latency_ms"] > 0
    assert len(first["request_id"]) == 16 and requests[1].get("duplicate") is True
    assert requests[3]["reason"] == "CARD_LOST"
    audit = [r for r in records if r["logger"] == "medsettle.audit"]
    assert [(a["event"], a["settlement_id"], a["total_fen"]) for a in audit] == [
        ("settle", settled.settlement_id, 277_750), ("resend", settled.settlement_id, 277_750),
        ("reverse", settled.settlement_id, -277_750),
    ]  # fmt: skip
    assert audit[0]["policy_version"] == "cq-2026.1"


async def test_no_personal_data_in_any_line(stub: Any, terminal: Terminal, captured: io.StringIO) -> None:
    await stub.QueryEligibility(
        pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=CARD))
    )
    await stub.Settle(terminal.settle(STAY))
    logging.getLogger("anything").warning(
        "careless: card %s id %s", CARD, "500103197803127019", extra={"person_name": "张伟", "card": CARD}
    )
    text = captured.getvalue()
    assert text.count("\n") >= 3
    for secret in SECRETS:
        assert secret not in text, secret
    careless = lines(captured)[-1]
    assert careless["msg"] == "careless: card Y******93 id 500103********7019"
    assert careless["person_name"] == "张*" and careless["card"] == "Y******93"
