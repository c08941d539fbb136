"""`medsettle audit`: re-runs the engine on every live settlement's recorded inputs, plan-year by
plan-year in the order settled, and proves that the store and the ledger agree with it (the arithmetic
is the pure gateway.engine.audit). Prints what differs; the command exits non-zero when anything does.

Checked per person: each plan-year's splits, accumulators and stays (audit_plan_year); the personal
account against its opening balance and what the live settlements pay from it (audit_account). Checked
over everything: each settlement's ledger entries plus its events still queued for posting equal what
it pays now (audit_ledger)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.settlement_store import SettlementStore, StoredSettlement
from gateway.engine.audit import audit_account, audit_ledger, audit_plan_year
from gateway.engine.corrections import LiveSettlement, Money
from gateway.engine.model import Scheme
from gateway.resplit import VersionSource, load_rules


@dataclass
class Report:
    persons: int = 0
    plan_years: int = 0
    settlements: int = 0
    archived: int = 0  # settlements retention moved to the ledger, checked against its records
    differences: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (
            f"audited {self.persons} persons, {self.plan_years} plan-years,"
            f" {self.settlements} live settlements, {self.archived} archived in the ledger"
        )
        if not self.differences:
            return [head, "no differences"]
        return [head, f"{len(self.differences)} differences:", *(f"  {d}" for d in self.differences)]


def caps_of(policy: Any, scheme: str) -> list[tuple[str, int]]:
    """Every capped counter of the scheme's plans (the tightest maximum of a counter)."""
    caps: dict[str, int] = {}
    for (plan_scheme, _), plan in policy.plans.items():
        if plan_scheme is Scheme(scheme):
            for key, maximum in plan.caps:
                caps[key] = min(maximum, caps.get(key, maximum))
    return sorted(caps.items())


async def audit_person(
    store: SettlementStore, static: VersionSource, person_id: str, years: Iterable[int], report: Report
) -> list[LiveSettlement]:
    """Audits one person's plan-years and account; returns the live settlements found."""
    report.persons += 1
    live: list[LiveSettlement] = []
    balance = opening = None
    for year in sorted(set(years)):
        snapshot = await store.read_person(person_id, year)
        if snapshot is None:
            report.differences.append(f"{person_id}: plan-years of {year} but no person record")
            continue
        balance = snapshot.balance_fen
        for key, plan_year in sorted(snapshot.years.items()):
            report.plan_years += 1
            stored = await store.settlements(list(plan_year.live))
            missing = [sid for sid, s in zip(plan_year.live, stored, strict=True) if s is None]
            if missing:
                report.differences.append(f"{key}: live settlements missing from the store: {missing}")
                continue
            settlements = [s.live for s in stored if s is not None]
            reversed_ = [s.settlement_id for s in stored if s is not None and s.status != "settled"]
            if reversed_:
                report.differences.append(f"{key}: reversed settlements still live: {reversed_}")
            report.settlements += len(settlements)
            live += settlements
            versions = {s.inputs.policy_version for s in settlements}
            rules, resplit = await load_rules(
                static, store, person_id, key.region, [s.inputs for s in settlements]
            )
            caps = [
                c for v in versions if v in rules.policies for c in caps_of(rules.policies[v], key.scheme)
            ]
            for line in audit_plan_year(plan_year, settlements, resplit, caps):
                report.differences.append(f"{person_id} {line}")
    opening = await store.opening_balance(person_id)
    if balance is not None and opening is not None:
        for line in audit_account(opening, balance, live):
            report.differences.append(f"{person_id}: {line}")
    return live


def owed_by(settlements: Iterable[StoredSettlement]) -> dict[str, Money]:
    """What each settlement pays now, for the ledger comparison: nothing once reversed."""
    return {s.settlement_id: (s.live.money if s.status == "settled" else Money()) for s in settlements}


def events_by_settlement(events: Iterable[Mapping[str, Any]]) -> dict[str, Money]:
    out: dict[str, Money] = {}
    for e in events:
        money = Money(
            int(e["total"]),
            {str(k): int(v) for k, v in dict(e["funds"]).items()},
            int(e["account"]),
            int(e["cash"]),
        )
        out[str(e["sid"])] = out.get(str(e["sid"]), Money()).plus(money)
    return out


def compare_ledger(
    settlements: Iterable[StoredSettlement],
    booked: Mapping[str, Money],
    queued: Iterable[Mapping[str, Any]],
    report: Report,
) -> None:
    for line in audit_ledger(owed_by(settlements), booked, events_by_settlement(queued)):
        report.differences.append(f"ledger: {line}")


async def audit_redis(redis_url: str, ledger_dsn: str | None) -> Report:
    """The whole store: every person's plan-years and account, then (with a ledger) every settlement
    against the ledger and the posting queue. Meant for a store at rest or nearly: a settlement
    committed while the audit reads may show as a difference; run it again."""
    import asyncio

    from adapters.ledger.store import Ledger
    from adapters.redis_store import RedisStore
    from gateway.config import Config
    from gateway.server import redis_client
    from rules_cache.static_data import StaticCache

    client = redis_client(redis_url, Config())
    report = Report()
    try:
        store = RedisStore(client)
        static = StaticCache(client)
        for person_id, years in sorted((await store.people()).items()):
            await audit_person(store, static, person_id, years, report)
        if ledger_dsn is not None:
            settlements = await store.every_settlement()
            queued = await store.queued_events()  # read before the ledger: booked meanwhile is found there
            ledger = Ledger(ledger_dsn)
            try:
                net: dict[str, tuple[int, dict[str, int], int, int]] = {}
                done: set[str] = set()
                archived: dict[str, StoredSettlement] = {}
                # a ledger no worker has opened yet has no tables: nothing is booked in it
                if await asyncio.to_thread(ledger.schema_version):
                    net = await asyncio.to_thread(ledger.net_by_settlement)
                    done = await asyncio.to_thread(
                        ledger.booked_entries, [str(e.get("entry", e["sid"])) for e in queued]
                    )
                    # what retention moved out of Redis is compared with the ledger's own records of it
                    present = {s.settlement_id for s in settlements}
                    gone = sorted(sid for sid in net if sid not in present)
                    archived = await asyncio.to_thread(ledger.archived_settlements, gone)
            finally:
                ledger.close()
            booked = {sid: Money(t, f, a, c) for sid, (t, f, a, c) in net.items()}
            waiting = [e for e in queued if str(e.get("entry", e["sid"])) not in done]
            report.archived = len(archived)
            compare_ledger([*settlements, *archived.values()], booked, waiting, report)
    finally:
        await client.aclose()
    return report
