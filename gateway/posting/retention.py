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
again."""

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
from gateway.engine.plan_year import PLAN_YEARS_KEPT, oldest_plan_year
from telemetry import metrics


def lua(name: str) -> str:
    return resources.files("adapters").joinpath("lua", name).read_text(encoding="utf-8")


log = logging.getLogger(__name__)
AUDIT = logging.getLogger("medsettle.audit")


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    plan_years_kept: int = PLAN_YEARS_KEPT
    grace_days: int = 7  # a plan-year is swept this long after it left the window
    years_back_max: int = 10  # how far back a sweep looks for indexes of older plan-years
    batch_max: int = 500  # settlements per round trip
    sweep_every_s: float = 3600.0


@dataclass
class SweepStats:
    removed: int = 0
    not_booked: int = 0  # kept: the ledger has no record of it yet (or it was corrected meanwhile)
    archived_from_redis: int = 0  # booked before records existed: the record was written from Redis
    years: list[tuple[int, int]] = field(default_factory=list)  # (partition, plan-year) emptied

    def add(self, other: SweepStats) -> None:
        self.removed += other.removed
        self.not_booked += other.not_booked
        self.archived_from_redis += other.archived_from_redis
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
        if total.removed or total.not_booked:
            AUDIT.info(
                "retention sweep",
                extra={
                    "event": "retention_sweep", "plan_years_before": before, "removed": total.removed,
                    "not_booked": total.not_booked, "archived_from_redis": total.archived_from_redis,
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
            if ids:
                self.remove(index, ids, stats, persons, staying)
            if cursor == 0:
                break
        done = sorted(persons - staying)
        for start in range(0, len(done), self.config.batch_max):
            self.client.delete(
                *(keys.year_key(pid, year) for pid in done[start : start + self.config.batch_max])
            )
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
