"""`medsettle audit` against a real redis-server and ledger: clean after real traffic, and each kind of
drift it exists to catch is found and named (a split that does not re-run the same, an accumulator that
is not the fold, an account that does not add up, a posting event lost before the ledger)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.audit import audit_redis
from gateway.protos import pb

from ..redis_state import CQ_EMPLOYEE
from .conftest import PERSON, PHARMACY, Terminal
from .test_settlement_rpcs import STAY

pytestmark = pytest.mark.asyncio


async def traffic(stub: Any, terminal: Terminal) -> list[Any]:
    first = await stub.Settle(terminal.settle(STAY))
    second = await stub.Settle(terminal.settle(STAY))
    await stub.Refund(
        pb.RefundRequest(
            envelope=terminal.envelope(),
            settlement_id=second.settlement_id,
            lines=[pb.RefundLine(line_no=5, quantity=2)],
        )
    )
    sale = await stub.Settle(
        terminal.settle([("D000004", 350, 4)], visit=pb.VISIT_TYPE_PHARMACY, institution=PHARMACY)
    )
    await stub.Reverse(
        pb.ReverseRequest(envelope=terminal.envelope(PHARMACY), settlement_id=sale.settlement_id)
    )
    return [first, second]


async def test_the_audit_is_clean_after_traffic_and_finds_every_kind_of_drift(
    stub: Any, terminal: Terminal, redis_server: EmbeddedRedis, sync_redis: redis.Redis, tmp_path: Any
) -> None:
    first, _ = await traffic(stub, terminal)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(ledger).migrate()  # an empty ledger: the posting worker has booked nothing yet
    clean = await audit_redis(redis_server.url, ledger)  # nothing booked yet: all of it is in the queue
    assert clean.differences == [] and clean.settlements == 2, clean.lines()

    year = keys.year_key(PERSON, 2026)
    sync_redis.hincrby(year, f"{CQ_EMPLOYEE}|a|fund.basic", 1)
    found = (await audit_redis(redis_server.url, None)).differences
    assert len(found) == 1 and "accumulators {'fund.basic'" in found[0], found
    sync_redis.hincrby(year, f"{CQ_EMPLOYEE}|a|fund.basic", -1)

    state = keys.state_key(PERSON)
    sync_redis.hincrby(state, "bal", -100)
    found = (await audit_redis(redis_server.url, None)).differences
    assert len(found) == 1 and "personal account" in found[0], found
    sync_redis.hincrby(state, "bal", 100)

    record = keys.settlement_key(first.settlement_id)
    money = json.loads(sync_redis.hget(record, "m"))
    money["f"]["310100"] += 1
    money["c"] -= 1
    original = sync_redis.hget(record, "m")
    sync_redis.hset(record, "m", json.dumps(money))
    found = (await audit_redis(redis_server.url, None)).differences
    assert any(first.settlement_id in line and "split again" in line for line in found), found
    sync_redis.hset(record, "m", original)

    stream = keys.stream_key(keys.partition_of(PERSON))
    lost = sync_redis.xrange(stream)[-1][0]  # an event lost before it reached the ledger
    sync_redis.xdel(stream, lost)
    found = (await audit_redis(redis_server.url, ledger)).differences
    assert len(found) == 1 and found[0].startswith("ledger:"), found

    command = [sys.executable, "-m", "gateway.cli", "audit", "--redis", redis_server.url, "--ledger", ledger]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "1 differences" in result.stdout, result.stdout + result.stderr
