"""The posting worker: reads the partition streams through a consumer group in batches, books each
batch in one database transaction, acknowledges only after the commit, reclaims entries a dead worker
left pending (XAUTOCLAIM), moves an entry that keeps failing to a dead-letter stream with the reason
(never drops it), and stops cleanly between batches.

Exactly once: delivery is at least once (a crash between the commit and the XACK redelivers), and the
ledger's primary key (settlement id, kind) makes booking an entry a second time a no-op."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from adapters import redis_keys as keys
from adapters.ledger.store import Entry, Ledger, LedgerUnavailable, UnbalancedEntry
from gateway.engine.routing import Journal, PostingError, Transfer, mirror, route
from gateway.posting.statements import fund_spend
from telemetry import metrics

log = logging.getLogger(__name__)
GROUP = "posting"
ACK_AND_DELETE = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""
DEADLETTER = "ms:posting:deadletter"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-posting")
    batch_max: int = 500  # entries per database transaction
    block_ms: int = 1000  # how long a read waits for new entries
    claim_idle_ms: int = 30_000  # an entry pending this long belongs to a dead worker: reclaim it
    claim_every_ms: int = 5_000
    attempts_max: int = 5  # then the entry goes to the dead-letter stream
    defer_max_ms: int = 120_000  # a reversal waits this long for its settlement before dead-lettering
    backoff_max_ms: int = 5_000  # database unreachable: wait at most this long between tries
    partitions: tuple[int, ...] = tuple(range(keys.PARTITIONS))
    observe_every_ms: int = 5_000  # stream, lag and budget gauges
    timezone: str = "Asia/Shanghai"  # the month of fund spend


class DeferEntry(Exception):
    """Not bookable yet (a reversal whose settlement is not booked): leave it pending, retry later."""


@dataclass
class Stats:
    booked: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    db_failures: int = 0


class PostingWorker:
    def __init__(self, client: redis.Redis, ledger: Ledger, config: WorkerConfig = WorkerConfig()) -> None:
        self.client = client
        self.ledger = ledger
        self.config = config
        self.streams = [keys.stream_key(p) for p in config.partitions]
        self.attempts: dict[str, tuple[int, float]] = {}  # entry id -> (failures, first failure)
        self.stats = Stats()
        self._own_pending = True  # after a start or a failure, first re-read what we hold unacked
        self._last_claim = 0.0
        self._backoff_ms = 100
        self.last_ok = time.monotonic()
        self._last_observe = 0.0
        self.budgets: dict[tuple[str, str, str], int] = {}
        self._ack = client.register_script(ACK_AND_DELETE)

    def prepare(self) -> None:
        self.ledger.migrate()
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, stop: threading.Event, on_idle: Callable[[], None] | None = None) -> None:
        self.prepare()
        while not stop.is_set():
            try:
                if self.step() == 0 and on_idle is not None:
                    on_idle()
                self.last_ok = time.monotonic()
                self.observe()
            except LedgerUnavailable as exc:
                self.stats.db_failures += 1
                log.warning("ledger unavailable, will retry in %d ms: %s", self._backoff_ms, exc)
                self._own_pending = True
                stop.wait(self._backoff_ms / 1000)
                self._backoff_ms = min(self.config.backoff_max_ms, self._backoff_ms * 2)
            except redis.ConnectionError as exc:
                metrics.POSTING_FAILURES.labels("redis_unavailable").inc()
                log.warning("redis unavailable: %s", exc)
                stop.wait(1.0)
            metrics.WORKER_UP.set(1 if self.health()[0] else 0)

    def health(self) -> tuple[bool, str]:
        """Healthy while a loop has succeeded within the last 15 s (Redis and the ledger both reached)."""
        age = time.monotonic() - self.last_ok
        return (age < 15, f"last successful loop {age:.1f}s ago")

    def observe(self) -> None:
        """Stream, lag and budget gauges, at most every observe_every_ms."""
        now = time.monotonic()
        if (now - self._last_observe) * 1000 < self.config.observe_every_ms:
            return
        self._last_observe = now
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xlen(stream)
            pipe.xpending(stream, GROUP)
            pipe.xrange(stream, count=1)
        replies = pipe.execute()
        oldest_ms = None
        for i, partition in enumerate(self.config.partitions):
            length, pending, first = replies[3 * i : 3 * i + 3]
            pending_count = int(pending["pending"]) if pending else 0
            label = str(partition)
            metrics.STREAM_LENGTH.labels(label).set(length)
            metrics.STREAM_PENDING.labels(label).set(pending_count)
            metrics.CONSUMER_LAG.labels(label).set(max(0, length - pending_count))
            if first:
                ms = int(text(first[0][0]).split("-")[0])
                oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        metrics.POSTING_LAG_S.set(0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000))
        month = datetime.now(ZoneInfo(self.config.timezone)).strftime("%Y-%m")
        for spend in fund_spend(self.ledger, month):
            metrics.FUND_SPEND_MONTH.labels(spend.region, spend.district, spend.fund_code).set(
                spend.amount_fen
            )
        for (region, district, fund_code), amount in self.budgets.items():
            metrics.FUND_BUDGET_MONTH.labels(region, district, fund_code).set(amount)

    # ---------------------------------------------------------------- reading

    def read(self) -> list[tuple[str, str, dict[bytes, bytes]]]:
        out: list[tuple[str, str, dict[bytes, bytes]]] = []
        if self._own_pending:
            self._own_pending = False
            replies = self.client.xreadgroup(
                GROUP, self.config.consumer, dict.fromkeys(self.streams, "0"), count=self.config.batch_max
            )
            out = flatten(replies)
            if any(entry_id not in self.attempts for _, entry_id, _ in out):
                self._own_pending = True  # keep draining our own backlog before taking new work
                return out
            # Only entries that wait (a correction whose settlement is not booked yet) or failed before:
            # go on and claim what dead consumers hold and read new work, or the settlement they wait for
            # would never come.
        now = time.monotonic()
        if (now - self._last_claim) * 1000 >= self.config.claim_every_ms:
            self._last_claim = now
            pipe = self.client.pipeline(transaction=False)
            for stream in self.streams:
                pipe.xautoclaim(
                    stream,
                    GROUP,
                    self.config.consumer,
                    self.config.claim_idle_ms,
                    "0-0",
                    count=self.config.batch_max,
                )
            claimed = False
            for stream, reply in zip(self.streams, pipe.execute(), strict=True):
                for i, f in reply[1]:
                    if f:
                        out.append((stream, text(i), f))
                        claimed = True
            if claimed:
                return unique(out)
        replies = self.client.xreadgroup(
            GROUP,
            self.config.consumer,
            dict.fromkeys(self.streams, ">"),
            count=self.config.batch_max,
            block=self.config.block_ms,
        )
        return unique(out + flatten(replies))

    # ---------------------------------------------------------------- booking

    def step(self) -> int:
        items = self.read()
        if not items:
            return 0
        entries: list[tuple[str, str, Entry]] = []
        poison: list[tuple[str, str, dict[bytes, bytes], str]] = []
        deferred = 0
        originals: dict[str, tuple[Journal, list[Transfer]]] = {}
        for stream, entry_id, fields in items:
            try:
                entry = self.to_entry(entry_id, fields, originals)
                entries.append((stream, entry_id, entry))
                if entry.journal.kind == "settle":
                    originals[entry.journal.settlement_id] = (entry.journal, entry.transfers)
            except (PostingError, UnbalancedEntry, json.JSONDecodeError, UnicodeDecodeError) as exc:
                poison.append((stream, entry_id, fields, str(exc)))
            except DeferEntry as exc:
                deferred += 1
                metrics.POSTING_FAILURES.labels("deferred").inc()
                self.note_failure(stream, entry_id, fields, str(exc), poison, self.config.defer_max_ms)
        try:
            new = self.ledger.book([e for _, _, e in entries])
        except LedgerUnavailable:
            metrics.POSTING_FAILURES.labels("ledger_unavailable").inc()
            raise
        except Exception as exc:  # one bad entry must not hold the others back: book them one by one
            log.warning("batch refused (%s); booking entries one by one", exc)
            new = []
            good = []
            for stream, entry_id, entry in entries:
                try:
                    new += self.ledger.book([entry])
                    good.append((stream, entry_id, entry))
                except LedgerUnavailable:
                    raise
                except Exception as one:
                    metrics.POSTING_FAILURES.labels("refused").inc()
                    self.note_failure(stream, entry_id, {}, f"refused by the ledger: {one}", poison)
            entries = good
        self.stats.batches += 1
        self.stats.booked += len(new)
        self.stats.duplicates += len(entries) - len(new)
        for journal in new:
            metrics.POSTED.labels(journal.kind).inc()
        metrics.POSTING_DUPLICATES.inc(len(entries) - len(new))
        self.acknowledge([(s, i) for s, i, _ in entries])
        for stream, entry_id, fields, reason in poison:
            self.dead_letter(stream, entry_id, fields, reason)
        self._backoff_ms = 100
        if deferred:
            self._own_pending = True
            if deferred == len(items):  # nothing else to do: do not spin on entries that must wait
                time.sleep(self.config.block_ms / 4000)
        return len(items)

    def to_entry(
        self, entry_id: str, fields: dict[bytes, bytes], originals: dict[str, tuple[Journal, list[Transfer]]]
    ) -> Entry:
        kind = fields.get(b"type", b"").decode()
        event = json.loads(fields.get(b"event", b"null"))
        if not isinstance(event, dict):
            raise PostingError("entry without an event")
        if kind == "settle":
            journal, transfers = route(event)
            return Entry(journal, transfers, entry_id)
        if kind not in ("reverse", "refund", "adjust"):
            raise PostingError(f"unknown entry type {kind!r}")
        sid = str(event.get("sid", ""))
        if kind == "reverse" and "total" not in event:  # a reversal event of the first format
            found = originals.get(sid) or self.ledger.original(sid)
            if found is None:
                raise DeferEntry(f"reversal of {sid} before its settlement is booked")
            journal, transfers = mirror(found[0], found[1], event)
            return Entry(journal, transfers, entry_id)
        journal, transfers = route(event)  # a malformed event is poison now, not in two minutes
        if journal.kind != kind:
            raise PostingError(f"entry type {kind!r} carries a {journal.kind!r} event")
        # a correction is booked after the settlement it corrects, so no statement shows it alone
        if sid not in originals and not self.ledger.settled([sid]):
            raise DeferEntry(f"{kind} of {sid} before its settlement is booked")
        return Entry(journal, transfers, entry_id)

    def note_failure(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        reason: str,
        poison: list[tuple[str, str, dict[bytes, bytes], str]],
        patience_ms: int = 0,
    ) -> None:
        """Count a failure; after attempts_max failures (and `patience_ms` since the first), the entry is
        dead-lettered."""
        count, first = self.attempts.get(entry_id, (0, time.monotonic()))
        count += 1
        self.attempts[entry_id] = (count, first)
        if count >= self.config.attempts_max and (time.monotonic() - first) * 1000 >= patience_ms:
            if not fields:
                found = self.client.xrange(stream, entry_id, entry_id) or []
                fields = dict(found[0][1]) if found else {}  # type: ignore[arg-type]
            poison.append((stream, entry_id, fields, f"{reason} (after {count} attempts)"))

    def acknowledge(self, done: list[tuple[str, str]]) -> None:
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in done:
            by_stream.setdefault(stream, []).append(entry_id)
            self.attempts.pop(entry_id, None)
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            # acknowledged and deleted at once (the ledger holds it now; the stream stays short): a worker
            # killed between the two would leave an entry no one reads again, holding the watermark back
            pipe.evalsha(self._ack.sha, 1, stream, GROUP, *ids)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):  # Redis restarted
            for stream, ids in by_stream.items():
                self._ack(keys=[stream], args=[GROUP, *ids])
        else:
            for r in results:
                if isinstance(r, Exception):
                    raise r

    def dead_letter(self, stream: str, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        """Never dropped: the entry goes, with why, to the dead-letter stream, and is then acknowledged."""
        record = {b"stream": stream.encode(), b"id": entry_id.encode(), b"reason": reason.encode()}
        record.update({b"f:" + k: v for k, v in fields.items()})
        self.client.xadd(DEADLETTER, record)  # type: ignore[arg-type]
        self._ack(keys=[stream], args=[GROUP, entry_id])
        self.attempts.pop(entry_id, None)
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.inc()
        log.error("dead-lettered %s %s: %s", stream, entry_id, reason)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unique(items: list[tuple[str, str, dict[bytes, bytes]]]) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """Each entry once (our own pending entries may come back through XAUTOCLAIM as well)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        if (item[0], item[1]) not in seen:
            seen.add((item[0], item[1]))
            out.append(item)
    return out


def flatten(replies: Any) -> list[tuple[str, str, dict[bytes, bytes]]]:
    out = []
    for stream, messages in replies or []:
        for entry_id, fields in messages:
            if fields:  # a pending entry deleted meanwhile comes back with no fields
                out.append((text(stream), text(entry_id), fields))
    return out
