"""Reading and arranging a person's state in a real redis-server the way the gateway keeps it
(adapters/settlement_records.py), so tests can say "200.00 yuan of the basic fund are left" and "the
basic fund has paid 1,679.35 this year" in the gateway's own terms."""

from __future__ import annotations

import redis

from adapters import redis_keys as keys

CQ_EMPLOYEE = "500000:employee"


def accumulators(r: redis.Redis, person_id: str, year: int = 2026, plan: str = CQ_EMPLOYEE) -> dict[str, int]:
    prefix = f"{plan}|a|".encode()
    return {
        k[len(prefix) :].decode(): int(v)
        for k, v in r.hgetall(keys.year_key(person_id, year)).items()
        if k.startswith(prefix)
    }


def live(r: redis.Redis, person_id: str, year: int = 2026, plan: str = CQ_EMPLOYEE) -> list[str]:
    raw = r.hget(keys.year_key(person_id, year), f"{plan}|L")
    return raw.decode().split() if raw else []


def set_opening(
    r: redis.Redis, person_id: str, values: dict[str, int], year: int = 2026, plan: str = CQ_EMPLOYEE
) -> None:
    """As if the core system had exported these accumulators for the year: the opening of the fold."""
    fields: dict[str, int] = {}
    for name, value in values.items():
        fields[f"{plan}|o|{name}"] = value
        fields[f"{plan}|a|{name}"] = value
    r.hset(keys.year_key(person_id, year), mapping=fields)  # type: ignore[arg-type]


def set_balance(r: redis.Redis, person_id: str, fen: int) -> None:
    """As if the core system had exported this personal account balance first."""
    r.hset(keys.state_key(person_id), mapping={"bal": fen, "bal0": fen})


def balance(r: redis.Redis, person_id: str = "PSN500000000001") -> int:
    return int(r.hget(keys.state_key(person_id), "bal") or 0)
