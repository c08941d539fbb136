"""`medsettle migrate`: brings a Redis written by the first release to this keyspace, in place, once,
with the gateways stopped. Each step is idempotent (a second run changes nothing):

1. the card and ID number index: `ms:card:<card_no>` and `ms:idno:<id_number>` become keyed hashes
   (IndexKeys), so no card or ID number is a key name any more;
2. a person's accumulators of a year (`ms:{p}:acc:<person>:<year>`, one counter set per person and
   year) become the opening of the plan-year of the enrolment in force on 1 January of that year (or
   the first enrolment): the plan-years of this release start from what was used before;
3. every personal account gets its opening balance (`bal0` = the balance now), which the auditor
   checks payments against from then on;
4. settlements of the first format keep their answer and become readable (GetSettlement, 5203); what
   they paid is in the plan-year's opening, so they are no longer live settlements of a plan-year and a
   correction of one goes through the agency, not through the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters.redis_store import text
from adapters.settlement_records import dumps
from gateway.protos import pb
from rules_cache import records


@dataclass
class Migrated:
    index_keys: int = 0
    plan_years: int = 0
    balances: int = 0
    settlements: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"card and ID index keys hashed: {self.index_keys}",
            f"accumulators moved to plan-year openings: {self.plan_years}",
            f"opening balances recorded: {self.balances}",
            f"first-format settlements made readable: {self.settlements}",
            *self.notes,
        ]


async def migrate(client: aioredis.Redis, index: keys.IndexKeys) -> Migrated:
    out = Migrated()
    for prefix, digest in (("ms:card:", index.card), ("ms:idno:", index.id_number)):
        async for raw in client.scan_iter(match=f"{prefix}*", count=1000):
            name = text(raw)
            number = name.removeprefix(prefix)
            if keys.is_digest(number):
                continue
            person_id = await client.get(name)
            if person_id is not None:
                await client.set(digest(number), person_id)
            await client.delete(name)
            out.index_keys += 1
    async for raw in client.scan_iter(match="ms:{p*}:acc:*", count=1000):
        name = text(raw)
        _, _, person_id, year_text = name.rsplit(":", 3)
        plan = await plan_of(client, person_id, int(year_text))
        values = {text(k): text(v) for k, v in (await client.hgetall(name)).items()}
        target = keys.year_key(person_id, int(year_text))
        for acc, value in values.items():
            if int(value):
                await client.hsetnx(target, f"{plan}|o|{acc}", value)
                await client.hsetnx(target, f"{plan}|a|{acc}", value)
        await client.delete(name)
        out.plan_years += 1
    async for raw in client.scan_iter(match="ms:{p*}:state:*", count=1000):
        name = text(raw)
        if await client.hsetnx(name, "bal0", await client.hget(name, "bal") or 0):
            out.balances += 1
    async for raw in client.scan_iter(match="ms:{p*}:stl:*", count=1000):
        name = text(raw)
        fields = await client.hgetall(name)
        if b"in" in fields or b"resp" not in fields:
            continue
        await client.hset(name, mapping=await legacy_fields(client, fields))  # type: ignore[arg-type]
        out.settlements += 1
    return out


async def plan_of(client: aioredis.Redis, person_id: str, year: int) -> str:
    """The plan (region:scheme) of the enrolment in force on 1 January of `year`, else the first."""
    raw = await client.get(keys.person_key(person_id))
    if raw is None:
        raise SystemExit(f"medsettle migrate: accumulators of {person_id} but no person record")
    person = records.person(json.loads(raw), "redis", person_id)
    on = date(year, 1, 1)
    enrolment = next((e for e in person.enrolments if e.in_force(on)), person.enrolments[0])
    return f"{enrolment.region}:{enrolment.scheme.value}"


async def legacy_fields(client: aioredis.Redis, fields: dict[bytes, bytes]) -> dict[str, str]:
    """What this release reads of a settlement, for one of the first format: its plan-year, what it
    paid (from its answer), its deltas (already in the plan-year's opening) and inputs with no lines
    (its bill was not recorded then)."""
    response = pb.SettleResponse.FromString(fields[b"resp"])
    split = response.split
    person_id = text(fields.get(b"pid", b""))
    year = int(text(fields.get(b"year", b"0")) or 0)
    plan = await plan_of(client, person_id, year)
    deltas = {text(k)[2:]: int(v) for k, v in fields.items() if text(k).startswith("d:")}
    funds: dict[str, int] = {}
    for f in split.funds:
        if f.amount_fen:
            funds[f.fund_code] = funds.get(f.fund_code, 0) + f.amount_fen
    money = {"t": split.total_fen, "f": funds, "a": split.account_fen, "c": split.cash_fen}
    on = response.settled_at[:10] or f"{year}-01-01"
    inputs: dict[str, Any] = {
        "b": {"v": "outpatient", "l": []}, "on": on, "inst": text(fields.get(b"inst", b"")),
        "pv": split.policy_version, "cv": split.catalog_version, "iv": "", "pd": "", "cap": split.account_fen,
        "legacy": True,
    }  # fmt: skip
    return {
        "plan": f"{plan}:{year}", "c": dumps({"d": deltas, "s": None, "p": None}), "m": dumps(money),
        "in": dumps(inputs), "r": dumps({}), "xn": "0", "msgid": text(fields.get(b"msgid", b"")),
    }  # fmt: skip
