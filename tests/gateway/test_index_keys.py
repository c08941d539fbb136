"""No card or ID number is a key name in Redis; a gateway with another index key is refused, not
silently blind; and `medsettle migrate` brings a Redis of the first release to this keyspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_store import RedisStore
from adapters.settlement_store import StoreRefused
from gateway.config import Config
from gateway.migrate import migrate
from gateway.protos import pb
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, NOW
from ..redis_state import accumulators
from .conftest import Terminal

pytestmark = pytest.mark.asyncio
PERSONS = json.loads((Path(__file__).resolve().parents[2] / "citydata" / "persons.json").read_text())


async def test_no_card_or_id_number_is_a_key_name(gateway: Gateway, sync_redis: redis.Redis) -> None:
    names = b" ".join(sync_redis.keys("*")).decode()
    numbers = [p["card_no"] for p in PERSONS] + [p["id_number"] for p in PERSONS]
    assert [n for n in numbers if n in names] == []
    assert sync_redis.get(INDEX.card(PERSONS[0]["card_no"])) == PERSONS[0]["person_id"].encode()


async def test_a_process_with_another_index_key_is_refused(
    gateway: Gateway, redis_server: EmbeddedRedis
) -> None:
    other = RedisStore(redis_client(redis_server.url, Config()), keys.IndexKeys(b"another deployment's key"))
    with pytest.raises(StoreRefused, match="index key is not the one"):
        await other.verify_index()
    await other.client.aclose()


async def test_migrate_brings_the_first_release_to_this_keyspace(
    gateway: Gateway, stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    # The first release's keys for the demo person: the card in the clear, accumulators per person and
    # year, a settlement record without inputs.
    pid, card = PERSONS[0]["person_id"], PERSONS[0]["card_no"]
    partition = keys.partition_of(pid)
    sync_redis.delete(INDEX.card(card), INDEX.id_number(PERSONS[0]["id_number"]), keys.year_key(pid, 2026))
    sync_redis.hdel(keys.state_key(pid), "bal0")
    sync_redis.set(f"ms:card:{card}", pid)
    sync_redis.hset(
        f"ms:{{p{partition:03d}}}:acc:{pid}:2026", mapping={"fund.basic": 167_935, "stays.inpatient": 1}
    )
    paid = pb.Split(
        total_fen=277_750, fund_total_fen=167_935, account_fen=109_815,
        funds=[pb.FundPayment(fund_code="310100", amount_fen=167_935)],
    )  # fmt: skip
    answer = pb.SettleResponse(
        settlement_id=f"S{partition:03d}-260301-legacy", settled_at="2026-03-01T09:00:00+08:00", split=paid
    )
    legacy = keys.settlement_key(answer.settlement_id)
    sync_redis.hset(legacy, mapping={"resp": answer.SerializeToString(), "status": "settled", "pid": pid,
                                     "year": 2026, "inst": "H50010300001", "msgid": "OLD0001",
                                     "d:fund.basic": 167_935})  # fmt: skip
    client = redis_client(gateway.redis_url, Config())
    report = await migrate(client, INDEX)
    assert (report.index_keys, report.plan_years, report.balances, report.settlements) == (1, 1, 1, 1)
    again = await migrate(client, INDEX)
    assert (again.index_keys, again.plan_years, again.balances, again.settlements) == (0, 0, 0, 0)
    await client.aclose()
    assert card not in b" ".join(sync_redis.keys("*")).decode()
    assert accumulators(sync_redis, pid) == {"fund.basic": 167_935, "stays.inpatient": 1}
    gateway.store._cards.clear()  # type: ignore[union-attr]  # a restarted gateway's empty cache
    # the card is found again, and the next stay is the person's second of the year (20% lower deductible)
    settled = await stub.Settle(terminal.settle([("T000049", 120_000, 1)]))
    assert settled.split.deductible_fen == 64_000
    got = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=answer.settlement_id)
    )
    assert got.settlement.split.total_fen == 277_750 and got.current.total_fen == 277_750
    assert NOW.year == 2026
