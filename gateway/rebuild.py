"""`medsettle rebuild`: every person's Redis state again, from the ledger and the person export, after
Redis was lost (or wiped). The ledger keeps what each commit wrote (adapters/settlement_records
.LedgerRecord): replayed in order they give back each settlement's hash byte for byte; the plan-years are
folded again by the pure core (gateway.engine.plan_year.fold) from the export's opening accumulators and
the live settlements in the order they were settled; the balance is the one the person's last commit
left. Message records whose idempotency window is still open come back with the rest of their window,
so a terminal's resend is answered as before.

Only the current and previous plan-years go back into Redis (retention); what paid from the account in
older ones becomes the state's archived total, as the retention sweep leaves it. The person's version is
set well above the last one recorded, so a commit computed before the loss can never pass the
compare-and-set after it.

What the ledger never received is not there to rebuild: entries still in a partition stream when Redis
was lost (drain posting before a planned wipe; after an unplanned loss, `medsettle audit` and the
terminals' reconciliation show them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters import settlement_records as rec
from adapters.ledger.store import Ledger
from adapters.redis_store import RedisStore
from adapters.settlement_records import LedgerRecord
from adapters.settlement_store import MessageRecord, StoredSettlement
from gateway.engine.plan_year import PLAN_YEARS_KEPT, PlanKey, PlanYear, empty, fold, oldest_plan_year

VERSION_BUMP = 1_000_000  # above any commit a gateway may have computed on the state before it was lost
PERSONS_PER_PAGE = 500
PROBLEMS_LISTED_MAX = 1000


class RebuildRefused(Exception):
    pass


@dataclass
class RebuildReport:
    persons_loaded: int = 0
    persons_rebuilt: int = 0
    settlements: int = 0  # back in Redis
    archived: int = 0  # of plan-years before the window: left in the ledger
    plan_years: int = 0
    messages: int = 0  # idempotency records still within their window
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < PROBLEMS_LISTED_MAX:
            self.problems.append(text)

    def lines(self) -> list[str]:
        out = [
            f"loaded {self.persons_loaded} persons from the export; rebuilt {self.persons_rebuilt} from the"
            f" ledger: {self.settlements} settlements and {self.plan_years} plan-years back in Redis,"
            f" {self.archived} of earlier plan-years left in the ledger, {self.messages} message records",
        ]
        if self.problems:
            out += [f"{len(self.problems)} problem(s):", *(f"  {p}" for p in self.problems)]
        else:
            out.append("no problems; `medsettle audit` proves the result")
        return out


@dataclass(frozen=True, slots=True)
class Replayed:
    """One settlement as its records replay, and the person's version when it was settled (the order of
    the plan-year's live list)."""

    stored: StoredSettlement
    fields: Mapping[bytes, bytes]
    settled_at_version: int


def replay(records: Sequence[tuple[str, str, LedgerRecord]]) -> tuple[list[Replayed], list[str]]:
    """A person's settlements from their records (already in commit order); and the ids of those whose
    first record is missing (booked from an entry of the first format, never archived): not rebuildable."""
    by_sid: dict[str, list[LedgerRecord]] = {}
    for sid, _, r in records:
        by_sid.setdefault(sid, []).append(r)
    out, broken = [], []
    for sid, rs in by_sid.items():
        fields = rec.replayed(rs)
        if b"resp" not in fields or b"plan" not in fields:
            broken.append(sid)
            continue
        out.append(Replayed(rec.settlement_from(sid, fields), fields, rs[0].version))
    out.sort(key=lambda s: (s.settled_at_version, s.stored.settlement_id))
    return out, broken


def plan_years(
    settlements: Iterable[Replayed], openings: Mapping[PlanKey, PlanYear], oldest: int
) -> dict[PlanKey, PlanYear]:
    """Each plan-year in the window: its opening, folded with its live settlements in settlement order
    (one whose settlements are all reversed too: the gateway kept its hash, with an empty live list)."""
    live: dict[PlanKey, list[Any]] = {}
    for s in settlements:
        if s.stored.plan.year >= oldest:
            contributions = live.setdefault(s.stored.plan, [])
            if s.stored.status == "settled":
                contributions.append(s.stored.live.contribution)
    out = {}
    for key in sorted(set(live) | {k for k in openings if k.year >= oldest}):
        opening = openings.get(key, empty(key)).opening
        out[key] = fold(key, opening, live.get(key, []))
    return out


def messages_within(
    records: Sequence[tuple[str, str, LedgerRecord]], now: datetime, window_ms: int
) -> list[tuple[MessageRecord, int]]:
    """Message records whose window is still open, with what is left of it (ms)."""
    out = []
    for _, at, r in records:
        left = window_ms - int((now - datetime.fromisoformat(at)).total_seconds() * 1000)
        if left > 0:
            out += [(m, left) for m in r.messages]
    return out


async def rebuild(
    client: aioredis.Redis,
    ledger: Ledger,
    persons: Sequence[Mapping[str, Any]],
    index: keys.IndexKeys,
    now: datetime,
    force: bool = False,
    plan_years_kept: int = PLAN_YEARS_KEPT,
    idempotency_retention_days: int = 7,
) -> RebuildReport:
    if not force:  # persons just loaded from the export are fine; settlements mean state is there
        async for _ in client.scan_iter(match="ms:{p*}:stl:*", count=1000):
            raise RebuildRefused(
                "Redis holds settlements: rebuild is for a Redis that lost them (wiped, or new); --force"
                " rewrites the persons the ledger knows over what is there"
            )
    report = RebuildReport()
    store = RedisStore(client, index, plan_years_kept=plan_years_kept)
    await store.verify_index()
    exported: set[str] = set()
    for i, record in enumerate(persons):
        await store.put_person(dict(record), f"persons[{i}]")
        exported.add(str(record["person_id"]))
    report.persons_loaded = len(exported)
    oldest = oldest_plan_year(now.year, plan_years_kept)
    window_ms = idempotency_retention_days * 86_400_000
    after = ""
    while True:
        page = ledger.person_records(after, PERSONS_PER_PAGE)
        if not page:
            break
        for pid, records in page:
            if pid not in exported:
                report.problem(f"{pid}: settlements in the ledger, but not in the person export")
                continue
            await rebuild_person(client, pid, records, oldest, now, window_ms, report)
        after = page[-1][0]
    return report


async def rebuild_person(
    client: aioredis.Redis,
    pid: str,
    records: Sequence[tuple[str, str, LedgerRecord]],
    oldest: int,
    now: datetime,
    window_ms: int,
    report: RebuildReport,
) -> None:
    settlements, broken = replay(records)
    for sid in broken:
        report.problem(f"{pid}: {sid} has no complete record in the ledger (booked before records existed)")
    year_keys = sorted({s.stored.plan.year for s in settlements if s.stored.plan.year >= oldest})
    openings: dict[PlanKey, PlanYear] = {}
    for year in year_keys:  # what put_person wrote: the export's opening accumulators of its year
        flat = await client.hgetall(keys.year_key(pid, year))
        openings.update(rec.years_from(year, {rec.text(k): rec.text(v) for k, v in flat.items()}))
    years = plan_years(settlements, openings, oldest)
    partition = keys.partition_of(pid)
    pipe = client.pipeline(transaction=False)
    archived_account = 0
    for s in settlements:
        if s.stored.plan.year < oldest:
            report.archived += 1
            if s.stored.status == "settled":
                archived_account += s.stored.live.money.account_fen
            continue
        written: dict[Any, Any] = dict(s.fields)
        pipe.hset(keys.settlement_key(s.stored.settlement_id), mapping=written)
        pipe.sadd(keys.plan_year_index_key(partition, s.stored.plan.year), s.stored.settlement_id)
        report.settlements += 1
    # each year hash written whole, once (one hash holds every plan of the person's year): a forced
    # rebuild over a year that retention by days had trimmed must not keep its `retired` totals (the
    # fold above has those settlements live again)
    for year in sorted({key.year for key in years}):
        pipe.delete(keys.year_key(pid, year))
    for key, plan_year in years.items():
        texts, ints = rec.year_fields(plan_year)
        fields: dict[Any, Any] = {**texts, **ints}
        pipe.hset(keys.year_key(pid, key.year), mapping=fields)
        report.plan_years += 1
    last = max(records, key=lambda r: r[2].version)[2]
    exported_balance = int(await client.hget(keys.state_key(pid), "bal0") or 0)
    spent = sum(s.stored.live.money.account_fen for s in settlements if s.stored.status == "settled")
    balance = last.balance_fen if last.version > 0 else exported_balance - spent
    if balance != exported_balance - spent:
        report.problem(
            f"{pid}: the last commit left the account at {balance}, but {exported_balance} exported -"
            f" {spent} paid = {exported_balance - spent} (was the export the one first loaded?)"
        )
    state: dict[Any, Any] = {"ver": last.version + VERSION_BUMP, "bal": balance}
    if archived_account:  # as the retention sweep leaves it: absent until something is archived
        state["arch"] = archived_account
    else:
        pipe.hdel(keys.state_key(pid), "arch")
    pipe.hset(keys.state_key(pid), mapping=state)
    for m, left_ms in messages_within(records, now, window_ms):
        idem = keys.idem_key(partition, m.institution, m.message_id)
        message: dict[Any, Any] = rec.message_fields(m)
        pipe.hset(idem, mapping=message)
        pipe.pexpire(idem, left_ms)
        pipe.set(keys.claim_key(m.institution, m.message_id), m.claim, px=left_ms)
        report.messages += 1
    await pipe.execute()
    report.persons_rebuilt += 1
