"""Rebuild on a real redis-server and real ledgers: after a year of settlements, reversals and refunds
is booked, Redis is wiped; `rebuild` from the ledger and the person export gives back every balance,
accumulator, stay, settlement record and open idempotency record, byte for byte; the auditor finds no
difference; a terminal's resend is answered as before; and a Redis still holding persons is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import date
from typing import Any

import pytest
import redis

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.audit import audit_redis
from gateway.codec import Envelope, PersonRef
from gateway.config import Config
from gateway.correction_service import Target
from gateway.data_loading import load_files
from gateway.engine.corrections import RefundLine
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.rebuild import VERSION_BUMP, RebuildRefused, rebuild
from gateway.server import Gateway, redis_client
from loadtest.synthetic import persons

from ..conftest import INDEX, NOW
from .test_worker import BILL, PERSONS, add_persons, run_until_caught_up, settle_many

pytestmark = pytest.mark.asyncio
CITYDATA = Config().citydata


def person_keys(r: redis.Redis) -> dict[str, Any]:
    """Everything of the persons' state Redis holds, by key (the version apart, which rebuild bumps)."""
    out: dict[str, Any] = {}
    for raw in r.scan_iter(match="ms:{*", count=1000):
        key = raw.decode()
        kind = r.type(raw).decode()
        if kind == "hash":
            value = r.hgetall(raw)
            if ":state:" in key:
                value.pop(b"ver")
            out[key] = value
        elif kind == "string":
            out[key] = r.get(raw)
        elif kind == "set":
            out[key] = r.smembers(raw)
    return {k: v for k, v in out.items() if ":stream" not in k}


async def load_static(client: Any) -> None:
    """The demo's policies, catalogs and institutions, into a Redis that lost them."""
    await load_files(
        client, policies=sorted((CITYDATA / "policies").glob("*.toml")),
        catalogs={p.stem: p for p in sorted((CITYDATA / "catalogs").glob("*.csv"))},
        institutions=CITYDATA / "institutions.csv",
    )  # fmt: skip


async def history(gw: Gateway) -> list[str]:
    """60 settlements over 40 persons, every 7th reversed, four partial refunds of persons' latest ones."""
    await add_persons(gw)
    sids = await settle_many(gw, 60, reverse_every=7)
    assert gw.corrections is not None
    for i in (45, 46, 47, 48):
        env = Envelope("H50010300001" if i % 2 else "H50010600001", "T", "op", f"REF{i:06d}")
        await gw.corrections.refund(env, Target(sids[i], "", None), (RefundLine(6, 1),), f"f{i}")
    return sids


async def test_a_wiped_redis_comes_back_from_the_ledger_exactly(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, ledger_dsn: str, redis_server: EmbeddedRedis
) -> None:
    await history(gateway)
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    before = person_keys(sync_redis)
    versions = {k: int(sync_redis.hget(k, "ver") or 0) for k in before if ":state:" in k}
    assert sum(1 for k in before if ":stl:" in k) == 60 and sum(1 for k in before if ":idem:" in k) == 73

    sync_redis.flushall()
    client = redis_client(redis_server.url, Config())
    try:
        await load_static(client)
        export = [*json.loads((CITYDATA / "persons.json").read_text(encoding="utf-8")), *persons(PERSONS)]
        report = await rebuild(client, ledger, export, INDEX, NOW)
        assert report.problems == []
        assert (report.persons_rebuilt, report.settlements, report.messages) == (PERSONS, 60, 73)
        after = person_keys(sync_redis)
        assert {k for k in after if k != keys.INDEX_CHECK} - set(before) == set()
        assert set(before) - set(after) == set()
        for key, value in before.items():
            assert after[key] == value, key
        for key, version in versions.items():  # bumped for the persons with settlements, kept for the others
            bump = VERSION_BUMP if ":state:PSNLT" in key else 0
            assert int(sync_redis.hget(key, "ver") or 0) == version + bump
        assert all(0 < sync_redis.pttl(k) <= 7 * 86_400_000 for k in after if ":idem:" in k)

        audited = await audit_redis(redis_server.url, ledger_dsn)
        assert audited.differences == [] and audited.settlements == 60 - 9

        with pytest.raises(RebuildRefused, match="holds settlements"):
            await rebuild(client, ledger, export, INDEX, NOW)
    finally:
        await client.aclose()


async def test_after_a_rebuild_a_resend_gets_its_first_answer_and_settling_goes_on(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, redis_server: EmbeddedRedis
) -> None:
    await add_persons(gateway)
    assert gateway.service is not None
    env = Envelope("H50010300001", "T", "op", "BEFORE-WIPE-1")
    first = await gateway.service.settle(env, PersonRef("L00000001", None), BILL, "h1")
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    balance = int(sync_redis.hget(keys.state_key("PSNLT00000001"), "bal") or 0)  # card L00000001's
    index_check = sync_redis.get(keys.INDEX_CHECK)
    for key in list(sync_redis.scan_iter(match="ms:{p*")):
        sync_redis.delete(key)  # the persons' state lost; static data and the index check survive
    for key in list(sync_redis.scan_iter(match="ms:card:*")) + list(sync_redis.scan_iter(match="ms:idno:*")):
        sync_redis.delete(key)
    assert sync_redis.get(keys.INDEX_CHECK) == index_check
    client = redis_client(redis_server.url, Config())
    try:
        report = await rebuild(client, ledger, persons(PERSONS), INDEX, NOW)
    finally:
        await client.aclose()
    assert report.problems == [] and report.settlements == 1
    assert int(sync_redis.hget(keys.state_key("PSNLT00000001"), "bal") or 0) == balance
    again = await gateway.service.settle(env, PersonRef("L00000001", None), BILL, "h1")
    assert again.duplicate and again.response == first.response
    later = await gateway.service.settle(
        Envelope("H50010300001", "T", "op", "AFTER-WIPE-1"), PersonRef("L00000001", None), BILL, "h2"
    )
    assert not later.duplicate and later.settlement_id != first.settlement_id


async def test_a_person_with_two_plans_in_one_year_gets_both_back(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, redis_server: EmbeddedRedis
) -> None:
    # an employee until March who is a resident from April: both plans live in the one year hash
    base = json.loads((CITYDATA / "persons.json").read_text(encoding="utf-8"))[0]
    employee = {**base["enrolments"][0], "valid_to": "2026-03-31"}
    resident = {
        **employee,
        "scheme": "resident",
        "person_type": "adult",
        "valid_from": "2026-04-01",
        "valid_to": None,
    }
    record = {
        **base, "person_id": "PSN500000000777", "card_no": "Y00000777", "id_number": "500103197803127777",
        "enrolments": [employee, resident], "special_diseases": [],
    }  # fmt: skip
    assert gateway.service is not None and gateway.store is not None
    await gateway.store.put_person(record)
    for day, n in ((date(2026, 3, 10), 1), (date(2026, 6, 15), 2)):
        bill = dataclasses.replace(BILL, visit_on=day)
        env = Envelope("H50010300001", "T", "op", f"TWO{n:04d}")
        await gateway.service.settle(env, PersonRef("Y00000777", None), bill, f"two{n}")
    year_key = keys.year_key("PSN500000000777", 2026)
    plans = {k.split(b"|")[0] for k in sync_redis.hkeys(year_key)}
    assert plans == {b"500000:employee", b"500000:resident"}
    await asyncio.to_thread(
        run_until_caught_up,
        PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None)),
        sync_redis,
    )
    before = sync_redis.hgetall(year_key)

    sync_redis.flushall()
    client = redis_client(redis_server.url, Config())
    try:
        await load_static(client)
        report = await rebuild(client, ledger, [record], INDEX, NOW)
    finally:
        await client.aclose()
    assert report.problems == [] and report.plan_years == 2
    assert sync_redis.hgetall(year_key) == before
