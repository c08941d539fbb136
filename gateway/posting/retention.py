"""Retention: settlements of plan-years that have left the correction window leave Redis, so its memory
stays bounded (a city's million settlements a day would otherwise fill it in weeks). The ledger keeps
what every commit wrote (adapters/settlement_records.LedgerRecord) and answers for them from then on
(adapters/ledger/archive.py): GetSettlement, Reverse and 5203 still find them.

Message records need no sweep: they expire by themselves idempotency_retention_days after their last use
(adapters/redis_store.py). Settlements cannot simply expire: one must never leave Redis before the
ledger holds its record, however long posting is held up. So the posting worker, which has both, sweeps
its partitions: for each plan-year older than the window (with a grace of `grace_days` after 1 January,
so no gateway with a slow clock is still settling it), it takes the slot's index of that year's
settlements, makes sure the ledger holds each one's record (writing one, from Redis, for a settlement
booked before records existed), then deletes the settlement and its person's year hash, and the index
when it is empty. A settlement the ledger has not booked yet stays, and is counted; the next sweep tries
again.

Retention by days (`settlement_days`, off by default): within the plan-years still in the window, a
settlement settled more than that many days ago leaves Redis too, once the ledger's replay of its records
is exactly what Redis holds. Its plan-year stays: the pure core (gateway.engine.plan_year.retire) moves
its deltas from the live list into the year's `retired` totals, only for a prefix of the live list and
none of a stay, and one commit (commit.lua, compared on the person's version like any commit) writes the
year, the account's archived total, and deletes the settlements. Such a settlement is answered from the
ledger and can no longer be corrected at the gateway: the days are the correction window."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from typing import Any

import redis

from adapters import redis_keys as keys
from adapters import settlement_records as rec
from adapters.ledger.store import Ledger
from adapters.redis_store import IDEMPOTENCY_RETENTION_DAYS
from adapters.settlement_store import StoredSettlement
from gateway.engine.plan_year import PLAN_YEARS_KEPT, PlanYear, oldest_plan_year, retirable, retire
from telemetry import metrics


def lua(name: str) -> str:
    return resources.files("adapters").joinpath("lua", name).read_text(encoding="utf-8")


log = logging.getLogger(__name__)
AUDIT = logging.getLogger("medsettle.audit")


# In a plan-year's index, beside settlement ids: a person whose settlements retention by days took, so
# the plan-year sweep still finds (and deletes) the person's year hash when the plan-year leaves
PERSON_MARK = "P:"
# Retention by days keeps a settlement in Redis at least this long: past the idempotency week and a month
# end's statements and reconciliation, the window in which terminals correct what they settled
SETTLEMENT_DAYS_MIN = 30


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    plan_years_kept: int = PLAN_YEARS_KEPT
    grace_days: int = 7  # a plan-year is swept this long after it left the window
    years_back_max: int = 10  # how far back a sweep looks for indexes of older plan-years
    batch_max: int = 500  # settlements per round trip
    sweep_every_s: float = 3600.0
    # also retire settlements settled this many days ago from the plan-years still in the window (the
    # gateway's correction window then ends with them); None: settlements leave with their plan-year
    settlement_days: int | None = None
    idempotency_days: int = IDEMPOTENCY_RETENTION_DAYS  # the gateways' message records' window


@dataclass
class SweepStats:
    removed: int = 0
    not_booked: int = 0  # kept: the ledger has no record of it yet (or it was corrected meanwhile)
    archived_from_redis: int = 0  # booked before records existed: the record was written from Redis
    retired: int = 0  # of plan-years still in the window, older than settlement_days (also in removed)
    years: list[tuple[int, int]] = field(default_factory=list)  # (partition, plan-year) emptied

    def add(self, other: SweepStats) -> None:
        self.removed += other.removed
        self.not_booked += other.not_booked
        self.archived_from_redis += other.archived_from_redis
        self.retired += other.retired
        self.years += other.years


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Retention:
    def __init__(
        self,
        client: redis.Redis,
        ledger: Ledger,
        today: Callable[[], date],
        partitions: Iterable[int] = range(keys.PARTITIONS),
        config: RetentionConfig = RetentionConfig(),
    ) -> None:
        self.client, self.ledger, self.today, self.config = client, ledger, today, config
        self.partitions = list(partitions)
        self._archive = client.register_script(lua("archive_settlement.lua"))
        self._commit = client.register_script(lua("commit.lua"))

    def swept_before(self) -> int:
        """Plan-years before this one leave Redis."""
        day = self.today() - timedelta(days=self.config.grace_days)
        return oldest_plan_year(day.year, self.config.plan_years_kept)

    def sweep(self) -> SweepStats:
        before = self.swept_before()
        years = range(before - self.config.years_back_max, before)
        pipe = self.client.pipeline(transaction=False)
        candidates = [(p, y) for p in self.partitions for y in years]
        for p, y in candidates:
            pipe.exists(keys.plan_year_index_key(p, y))
        total = SweepStats()
        for (p, y), found in zip(candidates, pipe.execute(), strict=True):
            if found:
                total.add(self.sweep_year(p, y))
        if self.config.settlement_days is not None:
            cutoff = self.today() - timedelta(days=self.config.settlement_days)
            for p in self.partitions:
                for y in range(before, cutoff.year + 1):
                    total.add(self.retire_year(p, y, cutoff))
        if total.removed or total.not_booked:
            AUDIT.info(
                "retention sweep",
                extra={
                    "event": "retention_sweep", "plan_years_before": before, "removed": total.removed,
                    "not_booked": total.not_booked, "archived_from_redis": total.archived_from_redis,
                    "retired": total.retired,
                },
            )  # fmt: skip
        metrics.RETENTION_REMOVED.inc(total.removed)
        metrics.RETENTION_NOT_BOOKED.set(total.not_booked)
        return total

    def sweep_year(self, partition: int, year: int) -> SweepStats:
        """The persons' year hashes go last, and only of persons none of whose settlements of the year
        had to stay (not booked yet): a year hash is what the auditor reads the live ones from."""
        index = keys.plan_year_index_key(partition, year)
        stats = SweepStats()
        persons: set[str] = set()
        staying: set[str] = set()
        cursor = 0
        while True:
            cursor, members = self.client.sscan(index, cursor, count=self.config.batch_max)
            ids = [text(m) for m in members]
            marked = {m.removeprefix(PERSON_MARK) for m in ids if m.startswith(PERSON_MARK)}
            persons |= marked  # retention by days took their settlements: their year hash goes now
            ids = [m for m in ids if not m.startswith(PERSON_MARK)]
            if ids:
                self.remove(index, ids, stats, persons, staying)
            if cursor == 0:
                break
        done = sorted(persons - staying)
        for start in range(0, len(done), self.config.batch_max):
            chunk = done[start : start + self.config.batch_max]
            self.client.delete(*(keys.year_key(pid, year) for pid in chunk))
            self.client.srem(index, *(PERSON_MARK + pid for pid in chunk))
        if self.client.scard(index) == 0:
            self.client.delete(index)
            stats.years.append((partition, year))
        return stats

    def remove(
        self, index: str, ids: list[str], stats: SweepStats, persons: set[str], staying: set[str]
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(keys.settlement_key(sid))
        hashes = dict(zip(ids, pipe.execute(), strict=True))
        gone = [sid for sid, h in hashes.items() if not h]  # removed by an earlier sweep cut short
        present = {sid: h for sid, h in hashes.items() if h}
        kept = self.ledger.archived(list(present))
        missing = [sid for sid in present if sid not in kept]
        if missing:  # booked before the ledger kept records: keep what Redis has, once
            booked = self.ledger.settled(missing)
            self.ledger.archive_from_store([(sid, self.record_of(present[sid])) for sid in sorted(booked)])
            stats.archived_from_redis += len(booked)
            kept |= booked
        for sid in gone:
            self.client.srem(index, sid)
        pipe = self.client.pipeline(transaction=False)
        calls: list[tuple[str, str]] = []
        for sid, h in present.items():
            pid = text(h[b"pid"])
            persons.add(pid)
            if sid not in kept:
                stats.not_booked += 1
                staying.add(pid)
                continue
            status, corrections = text(h[b"status"]), text(h.get(b"xn", b"0"))
            account = rec.money_from(h[b"m"]).account_fen if status == "settled" else 0
            # execute_command: a cluster pipeline blocks its evalsha method (the keys are in one slot)
            archive_keys = [keys.settlement_key(sid), keys.state_key(pid), index]
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._archive.sha, 3, *archive_keys, sid, status, corrections, str(account)
            )
            calls.append((sid, pid))
        outcomes = pipe.execute(raise_on_error=False) if calls else []
        if any(isinstance(o, redis.exceptions.NoScriptError) for o in outcomes):  # Redis restarted
            self.client.script_load(self._archive.script)
            return self.remove(index, ids, stats, persons, staying)
        for o in outcomes:
            if isinstance(o, Exception):
                raise o
        for (_, pid), outcome in zip(calls, outcomes, strict=True):
            if text(outcome) == "OK":
                stats.removed += 1
            elif text(outcome) == "CHANGED":  # corrected since it was read: the next sweep takes it
                stats.not_booked += 1
                staying.add(pid)

    @staticmethod
    def record_of(h: dict[bytes, bytes]) -> rec.LedgerRecord:
        """A settlement booked from an entry of the first format: its whole hash, as one record."""
        return rec.LedgerRecord(text(h[b"pid"]), text(h[b"plan"]), 0, 0, dict(h), ())

    # ---------------------------------------------------------------- retention by days

    def retire_year(self, partition: int, year: int, cutoff: date) -> SweepStats:
        """The settlements of a plan-year in the window settled before `cutoff`, person by person."""
        index = keys.plan_year_index_key(partition, year)
        stats = SweepStats()
        cursor = 0
        while True:
            cursor, members = self.client.sscan(index, cursor, count=self.config.batch_max)
            old = [sid for sid in map(text, members) if (d := settled_on(sid)) is not None and d < cutoff]
            if old:
                self.retire_settlements(index, year, old, stats)
            if cursor == 0:
                return stats

    def retire_settlements(self, index: str, year: int, ids: list[str], stats: SweepStats) -> None:
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(keys.settlement_key(sid))
        stored = {sid: rec.settlement_from(sid, h) for sid, h in zip(ids, pipe.execute(), strict=True) if h}
        # exactly what Redis holds, replayed from the ledger's records: its last correction is booked too
        in_ledger = self.ledger.archived_settlements(sorted(stored))
        # and nothing of it within the idempotency window: a resend of its settle or of a correction is
        # answered from the settlement hash, so it stays until every message record of it has expired
        last_change = self.ledger.last_entry_at(sorted(stored))
        quiet_before = self.today() - timedelta(days=self.config.idempotency_days)
        by_person: dict[str, list[StoredSettlement]] = {}
        for sid, s in stored.items():
            if in_ledger.get(sid) != s:
                stats.not_booked += 1
            elif date.fromisoformat(last_change[sid][:10]) < quiet_before:
                by_person.setdefault(s.person_id, []).append(s)
        for pid, settlements in sorted(by_person.items()):
            self.retire_person(pid, year, index, settlements, stats)

    def retire_person(
        self, pid: str, year: int, index: str, checked: list[StoredSettlement], stats: SweepStats
    ) -> None:
        """One commit: the person's plan-years of `year` without their retiring prefixes, the account's
        archived total, the settlements deleted. The version is read first and the settlements again
        after it: what the commit deletes is what the ledger was checked against as of that version, and
        a commit of the person's since moves the version: CONFLICT, and the next sweep tries again."""
        state_key, year_key = keys.state_key(pid), keys.year_key(pid, year)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(state_key, ["ver"])
        pipe.hgetall(year_key)
        for s in checked:
            pipe.hgetall(keys.settlement_key(s.settlement_id))
        (ver,), flat, *now = pipe.execute()
        settlements = [
            s for s, h in zip(checked, now, strict=True) if h and rec.settlement_from(s.settlement_id, h) == s
        ]
        stats.not_booked += len(checked) - len(settlements)  # corrected since the ledger was asked
        years = rec.years_from(year, {text(k): text(v) for k, v in flat.items()})
        live = {sid for y in years.values() for sid in y.live}
        going = [s for s in settlements if s.status != "settled" and s.settlement_id not in live]
        changed: list[tuple[PlanYear, PlanYear]] = []
        for key, plan_year in sorted(years.items()):
            first = retirable(
                plan_year,
                {
                    s.settlement_id: s.live.contribution
                    for s in settlements
                    if s.plan == key and s.status == "settled"
                },
            )
            if first:
                changed.append((plan_year, retire(plan_year, first)))
                ids = {c.settlement_id for c in first}
                going += [s for s in settlements if s.settlement_id in ids]
        if not going:  # every old one is behind a stay, or not the oldest of its plan-year yet
            return
        version = int(ver or 0)
        paid = sum(s.live.money.account_fen for s in going if s.status == "settled")
        commit_keys = [state_key, year_key, index, *(keys.settlement_key(s.settlement_id) for s in going)]
        # arch by increment: the plan-year sweep's archive script adds to it without moving the version
        args: list[Any] = ["V", 1, version, version + 1, "N", 1, 1, "arch", paid]
        for old, new in changed:
            texts, ints, gone = rec.year_diff(old, new)
            args += ["H", 2, len(texts), *(x for kv in sorted(texts.items()) for x in kv)]
            args += ["I", 2, len(ints), *(x for kv in sorted(ints.items()) for x in kv)]
            args += ["D", 2, len(gone), *gone]
        for i in range(len(going)):
            args += ["K", 4 + i]
        args += ["R", 3, len(going), *(s.settlement_id for s in going)]
        # the index keeps the person instead: the plan-year sweep deletes its year hash when the year goes
        args += ["S", 3, 1, PERSON_MARK + pid]
        reply = self._commit(keys=commit_keys, args=[str(a) for a in args])
        outcome = text(reply[0])
        if outcome == "OK":
            stats.removed += len(going)
            stats.retired += len(going)
        elif outcome == "CONFLICT":
            stats.not_booked += len(going)  # changed since it was read: the next sweep takes it
        else:
            raise redis.ResponseError(f"retention commit for {pid} refused: {[text(r) for r in reply]}")


def settled_on(settlement_id: str) -> date | None:
    """The day in a settlement id (S017-260615-...: the gateway's date when it settled), or None."""
    try:
        stamp = settlement_id.split("-")[1]
        return date(2000 + int(stamp[:2]), int(stamp[2:4]), int(stamp[4:6])) if len(stamp) == 6 else None
    except (IndexError, ValueError):
        return None
