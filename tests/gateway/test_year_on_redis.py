"""The state machine of tests/gateway/test_year_stateful.py on a real redis-server through the Redis
store and its Lua scripts (fewer sequences: each step is real round trips): the same audit after every
step, so the scripts' compare-and-write, the plan-year encoding and the message claims are checked
against the same arithmetic as the in-memory store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings

from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_store import RedisStore
from gateway.config import Config
from gateway.engine.model import Person
from gateway.server import redis_client

from ..conftest import INDEX
from . import test_year_stateful as machine

SERVER: EmbeddedRedis | None = None


def record(p: Person, balance_fen: int) -> dict[str, Any]:
    """The person as the core system exports it (citydata/README.md)."""
    return {
        "person_id": p.person_id, "name": p.name, "id_number": p.id_number, "card_no": p.card_no,
        "card_status": "normal", "sex": p.sex.value, "birth_date": p.birth_date.isoformat(),
        "tags": sorted(p.tags), "approvals": [], "special_diseases": [], "account_balance_fen": balance_fen,
        "enrolments": [
            {
                "region": e.region, "district": e.district, "scheme": e.scheme.value,
                "person_type": e.person_type.value, "status": e.status.value,
                "valid_from": e.valid_from.isoformat(),
                "valid_to": e.valid_to.isoformat() if e.valid_to else None,
                "tiers": [{"tier": t.tier, "applied_on": t.applied_on.isoformat()} for t in e.tiers],
            }
            for e in p.enrolments
        ],
    }  # fmt: skip


class YearOnRedis(machine.Year):
    def make_store(self) -> Any:
        assert SERVER is not None
        redis.Redis.from_url(SERVER.url).flushdb()
        store = RedisStore(redis_client(SERVER.url, Config()), INDEX)

        async def load() -> None:
            for pid, p in machine.PERSONS.items():
                await store.put_person(record(p, machine.BALANCES[pid]))

        self.loop.run_until_complete(load())
        return store

    async def everything(self) -> tuple[list[Any], list[Any]]:
        return await self.store.every_settlement(), await self.store.queued_events()

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.client.aclose())
        super().teardown()


@pytest.fixture(scope="module", autouse=True)
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    global SERVER
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("year-redis"))) as SERVER:
        yield SERVER
    SERVER = None


YearOnRedis.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_a_year_of_bills_on_redis = YearOnRedis.TestCase
