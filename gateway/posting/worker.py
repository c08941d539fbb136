"""The posting worker: reads the partition streams through a consumer group in batches, books each
batch in one database transaction, acknowledges only after the commit, reclaims entries a dead worker
left pending (XAUTOCLAIM), moves an entry that keeps failing to a dead-letter stream with the reason
(never drops it; gateway/posting/deadletters.py), and stops cleanly between batches.

Exactly once: delivery is at least once (a crash between the commit and the XACK redelivers), and the
ledger's primary key (settlement id, kind) makes booking an entry a second time a no-op.

It survives its dependencies: Redis stalled, timing out, restarted or loading its AOF, the database
unreachable or refusing: nothing is acknowledged that is not booked, the loop backs off and goes on, and
/healthz says which dependency fails and since when. Only a stop request ends the loop."""

from __future__ import annotations

import binascii
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from adapters import redis_keys as keys
from adapters.ledger.store import Entry, Ledger, LedgerUnavailable, Record, UnbalancedEntry
from adapters.redis_topology import is_cluster, sync_client
from adapters.settlement_records import ledger_record_from
from gateway.engine.routing import Journal, PostingError, Transfer, mirror, route
from gateway.posting import deadletters
from gateway.posting.deadletters import DEADLETTER, HELD
from gateway.posting.leases import LEASE_TTL_MS, RENEW_EVERY_MS, Leases, consumer_of
from gateway.posting.retention import Retention, RetentionConfig
from gateway.posting.statements import fund_spend, institution_fund_spend
from telemetry import metrics

log = logging.getLogger(__name__)
GROUP = "posting"
# KEYS: the partition stream, the held set. ARGV: group, n, n entry ids, then the holds the booked entries
# release (replayed dead letters): acknowledged, deleted and released at once, so a worker killed between
# them cannot leave an entry no one reads again, nor a hold nothing releases (either would hold the
# posted-through watermark back for good)
# On a cluster the held set is in another slot: the script gets the stream alone, and the holds are
# released first, by a ZREM of their own. That order is safe without atomicity: the entries are booked
# (in the ledger) before either step, so a hold released is true, and an entry a crash leaves
# unacknowledged is redelivered and booked again as a no-op.
ACK_AND_DELETE = """
local n = tonumber(ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3, 2 + n))
local deleted = redis.call('XDEL', KEYS[1], unpack(ARGV, 3, 2 + n))
if #KEYS > 1 and #ARGV > 2 + n then redis.call('ZREM', KEYS[2], unpack(ARGV, 3 + n)) end
return deleted
"""
HEALTHY_WITHIN_S = 15.0  # /healthz is 200 while a loop (Redis and the ledger reached) succeeded this recently
REDIS_SOCKET_TIMEOUT_S = 5.0  # a command that gets no answer this long fails; the loop retries
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_BACKOFF_S = 1.0  # between tries while Redis fails
UNEXPECTED_BACKOFF_S = 5.0  # after an exception nobody expected (logged with its traceback)


def redis_client(url: str) -> redis.Redis:
    """The worker's Redis client (one node, Sentinel's master or a cluster: adapters/redis_topology.py).
    No retries inside redis-py: a command whose reply was lost must surface
    here, where the loop re-reads its own pending entries (an XREADGROUP retried blindly would leave the
    lost reply's entries in our pending list unseen until a claim). Dead pooled connections are found by
    a PING before use (health_check_interval) instead."""
    return sync_client(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=1,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-posting")
    batch_max: int = 500  # entries per database transaction
    block_ms: int = 1000  # how long a read waits for new entries
    claim_idle_ms: int = 30_000  # an entry pending this long belongs to a dead worker: reclaim it
    claim_every_ms: int = 5_000
    attempts_max: int = 5  # then the entry goes to the dead-letter stream (a correction waiting: never)
    backoff_max_ms: int = 5_000  # database unreachable: wait at most this long between tries
    partitions: tuple[int, ...] = tuple(range(keys.PARTITIONS))
    retention: RetentionConfig | None = field(default_factory=RetentionConfig)  # None: never sweep
    observe_every_ms: int = 5_000  # stream, lag and budget gauges
    timezone: str = "Asia/Shanghai"  # the month of fund spend
    # Leases (gateway/posting/leases.py): share the partitions with the other workers, each read on its
    # own (no cross-slot XREADGROUP: what a cluster needs; forced on for a cluster client)
    leases: bool = False
    lease_ttl_ms: int = LEASE_TTL_MS
    lease_renew_every_ms: int = RENEW_EVERY_MS
    # leased partitions are polled (one non-blocking read each): after a poll that found nothing, wait
    # poll_ms, doubling while nothing comes, up to block_ms
    poll_ms: int = 50
    # PostgreSQL's ledger partitions (adapters/ledger/partitions.py) for this month and the months ahead:
    # made at the start and this often, for each region booked (at most regions_max of them)
    partitions_every_s: float = 6 * 3600.0
    regions_max: int = 1000


class DeferEntry(Exception):
    """Not bookable yet (a correction whose settlement is not booked): leave it pending, retry later, for as
    long as it takes; the settlement may be pending in a dead consumer's list until a claim brings it."""


@dataclass
class Stats:
    booked: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    db_failures: int = 0
    redis_failures: int = 0
    deferred: int = 0
    unexpected: int = 0


@dataclass
class Dependency:
    """What the last contact with a dependency said, for /healthz."""

    name: str
    ok_at: float = field(default_factory=time.monotonic)
    failing_since: float | None = None
    error: str = ""

    def ok(self) -> None:
        self.ok_at = time.monotonic()
        self.failing_since = None
        self.error = ""

    def failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.error = f"{type(exc).__name__}: {exc}"[:200]

    def describe(self, now: float) -> str:
        if self.failing_since is None:
            return f"{self.name} ok ({now - self.ok_at:.1f}s ago)"
        return f"{self.name} failing for {now - self.failing_since:.1f}s ({self.error})"


class PostingWorker:
    def __init__(
        self,
        client: redis.Redis,
        ledger: Ledger,
        config: WorkerConfig = WorkerConfig(),
        today: Callable[[], date] | None = None,  # tests move the clock; production: config.timezone
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.config = config
        zone = ZoneInfo(config.timezone)
        clock = today or (lambda: datetime.now(zone).date())
        self.today = clock
        self.retention = (
            Retention(client, ledger, clock, config.partitions, config.retention)
            if config.retention
            else None
        )
        self._last_sweep = float("-inf")
        self.streams = [keys.stream_key(p) for p in config.partitions]
        self.attempts: dict[str, tuple[int, float]] = {}  # entry id -> (failures, first failure)
        self.stats = Stats()
        self._own_pending = True  # after a start or a failure, first re-read what we hold unacked
        self._last_claim = 0.0
        self._backoff_ms = 100
        self.last_ok = time.monotonic()
        self.redis = Dependency("redis")
        self.database = Dependency("ledger")
        self.unexpected = ""  # the last exception nobody expected, for /healthz
        self._prepared = False
        self._last_observe = 0.0
        self.budgets: dict[tuple[str, str, str], int] = {}
        self.institution_budgets: dict[tuple[str, int], int] = {}  # (institution, year) -> fen
        self._ack = client.register_script(ACK_AND_DELETE)
        self._dead_letter = client.register_script(deadletters.DEAD_LETTER_LUA)
        self._dead_letter_record = client.register_script(deadletters.DEAD_LETTER_RECORD_LUA)
        self.cluster = is_cluster(client)
        self.leases = (
            Leases(client, config.consumer, config.partitions, config.lease_ttl_ms)
            if config.leases or self.cluster
            else None
        )
        self._last_renew = float("-inf")
        self._pending_parts: set[int] = set()  # leased partitions whose pending entries are read first
        self._idle_polls = 0  # leases: polls in a row that found nothing
        self._last_partition = float("-inf")
        self.regions_booked: set[str] = set()  # institutions' regions: each gets ledger partitions

    def prepare(self) -> None:
        self.ledger.migrate()
        for old in deadletters.adopt_old_names(self.client):
            log.info("dead letters: %s renamed to its {posting} name", old)
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._prepared = True

    def run(self, stop: threading.Event, on_idle: Callable[[], None] | None = None) -> None:
        """Until `stop` is set, whatever Redis and the database do meanwhile."""
        healthy = metrics.worker_healthy()
        while not stop.is_set():
            try:
                if not self._prepared:
                    self.prepare()
                self.renew_when_due()
                self.partition_when_due()
                if self.step() == 0:
                    self.sweep_when_due()
                    if on_idle is not None:
                        on_idle()
                self.last_ok = time.monotonic()
                self.redis.ok()
                self.observe()
            except LedgerUnavailable as exc:
                self.stats.db_failures += 1
                self.database.failed(exc)
                log.warning("ledger unavailable, will retry in %d ms: %s", self._backoff_ms, exc)
                self._own_pending = True
                stop.wait(self._backoff_ms / 1000)
                self._backoff_ms = min(self.config.backoff_max_ms, self._backoff_ms * 2)
            except redis.RedisError as exc:
                # stalled (TimeoutError), restarted (ConnectionError), loading its AOF (BusyLoadingError),
                # or restarted empty (NOGROUP): nothing unbooked was acknowledged; what a lost reply
                # delivered to us is in our pending list, which the next loop reads first
                self.stats.redis_failures += 1
                self.redis.failed(exc)
                reason = "redis_timeout" if isinstance(exc, redis.TimeoutError) else "redis_unavailable"
                metrics.POSTING_FAILURES.labels(reason).inc()
                log.warning(
                    "redis failed (%s), will retry in %.0f s: %s", type(exc).__name__, REDIS_BACKOFF_S, exc
                )
                self._own_pending = True
                if "NOGROUP" in str(exc):
                    self._prepared = False
                stop.wait(REDIS_BACKOFF_S)
            except Exception as exc:  # a bug or a surprise: logged with its traceback, never the end
                self.stats.unexpected += 1
                metrics.POSTING_FAILURES.labels("unexpected").inc()
                log.exception("posting loop failed unexpectedly; will retry in %.0f s", UNEXPECTED_BACKOFF_S)
                self.unexpected = f"{type(exc).__name__}: {exc}"[:200]
                self._own_pending = True
                stop.wait(UNEXPECTED_BACKOFF_S)
            healthy.set(1 if self.health()[0] else 0)
        if self.leases is not None:
            try:
                self.leases.leave()
            except redis.RedisError as exc:  # the others take over after the lease TTL instead
                log.warning("could not release the partition leases: %s", exc)

    def renew_when_due(self) -> None:
        """Leases: every lease_renew_every_ms, the membership and the split; newly taken partitions'
        pending entries are read first (what their last owner left unacknowledged); retention sweeps
        only the partitions this worker owns."""
        if self.leases is None:
            return
        now = time.monotonic()
        if (now - self._last_renew) * 1000 < self.config.lease_renew_every_ms:
            return
        self._last_renew = now
        change = self.leases.renew()
        self._pending_parts |= change.taken
        self._pending_parts &= change.owned
        self.streams = [keys.stream_key(p) for p in sorted(change.owned)]
        if self.retention is not None:
            self.retention.partitions = sorted(change.owned)
        if change.taken or change.released:
            log.info(
                "leases: %d partition(s) owned, %d taken, %d released, %d waiting for another worker's lease",
                len(change.owned), len(change.taken), len(change.released), len(change.waiting),
            )  # fmt: skip

    def partition_when_due(self) -> None:
        """The ledger's partitions for this month and the months ahead, at the start and every
        partitions_every_s (PostgreSQL; nothing on SQLite): an entry of a month without them would go to
        the default partition, which then keeps that month from getting its own."""
        now = time.monotonic()
        if now - self._last_partition < self.config.partitions_every_s:
            return
        self._last_partition = now
        month = self.today().strftime("%Y-%m")
        try:
            created = self.ledger.ensure_partitions(month, self.regions_booked)
        except LedgerUnavailable:
            raise
        except Exception as exc:  # booking goes on (into the default partitions); the gauge below alerts
            log.error(
                "could not create the ledger's partitions for %s (may the worker's database role create"
                " tables in the ledger's schema, and does it own the ledger's tables?): %s", month, exc,
            )  # fmt: skip
            created = []
        metrics.LEDGER_MONTHS_WITHOUT_PARTITIONS.set(self.ledger.months_without_partitions(month))
        if created:
            log.info(
                "ledger partitions created: %s",
                ", ".join(f"{m} {r or '(month)'}" for m, r in created),
            )

    def sweep_when_due(self) -> None:
        """Retention, when there is nothing to book and the last sweep is sweep_every_s old."""
        if self.retention is None:
            return
        now = time.monotonic()
        if now - self._last_sweep < self.retention.config.sweep_every_s:
            return
        self._last_sweep = now
        stats = self.retention.sweep()
        if stats.removed or stats.not_booked:
            log.info(
                "retention: %d settlement(s) of plan-years before %d left Redis, %d kept (not booked)",
                stats.removed, self.retention.swept_before(), stats.not_booked,
            )  # fmt: skip

    def health(self) -> tuple[bool, str]:
        """Healthy while a loop has succeeded within HEALTHY_WITHIN_S (Redis reached, and the ledger when
        there was anything to book or observe), with what each dependency last said."""
        now = time.monotonic()
        age = now - self.last_ok
        ok = age < HEALTHY_WITHIN_S and self.database.failing_since is None
        detail = f"{self.redis.describe(now)}; {self.database.describe(now)}"
        if self.unexpected and age >= HEALTHY_WITHIN_S:
            detail += f"; last unexpected failure: {self.unexpected}"
        return ok, f"last successful loop {age:.1f}s ago; {detail}"

    def observe(self) -> None:
        """Fund spend and budget gauges, at most every observe_every_ms; it also proves the ledger answers
        when there is nothing to book. The backlog (stream lengths, lag, dead letters) is read from Redis
        by the gateway (gateway/ops/backlog.py), so it stays true while this worker is dead."""
        now = time.monotonic()
        if (now - self._last_observe) * 1000 < self.config.observe_every_ms:
            return
        self._last_observe = now
        month = datetime.now(ZoneInfo(self.config.timezone)).strftime("%Y-%m")
        for spend in fund_spend(self.ledger, month):
            metrics.FUND_SPEND_MONTH.labels(spend.region, spend.district, spend.fund_code).set(
                spend.amount_fen
            )
        self.database.ok()
        for (region, district, fund_code), amount in self.budgets.items():
            metrics.FUND_BUDGET_MONTH.labels(region, district, fund_code).set(amount)
        if self.institution_budgets:  # spend only of institutions with a budget: bounded label values
            year = self.today().year
            budgets = {inst: fen for (inst, y), fen in self.institution_budgets.items() if y == year}
            spent = dict(institution_fund_spend(self.ledger, year))
            for institution, fen in budgets.items():
                metrics.INSTITUTION_SPEND_YEAR.labels(institution).set(spent.get(institution, 0))
                metrics.INSTITUTION_BUDGET_YEAR.labels(institution).set(fen)

    # ---------------------------------------------------------------- reading

    def read_leased(self) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """One non-blocking read per owned partition (each in its own slot), as the partition's consumer:
        first the pending entries of partitions just taken or after a failure, then new ones."""
        assert self.leases is not None
        owned = sorted(self.leases.owned)
        if not owned:
            time.sleep(self.config.poll_ms / 1000)
            return []
        if self._own_pending:
            self._own_pending = False
            self._pending_parts |= set(owned)
        out: list[tuple[str, str, dict[bytes, bytes]]] = []
        draining: set[int] = set()
        pending = sorted(self._pending_parts & set(owned))
        if pending:
            pipe = self.client.pipeline(transaction=False)
            for p in pending:
                pipe.xreadgroup(GROUP, consumer_of(p), {keys.stream_key(p): "0"}, count=self.config.batch_max)
            for p, reply in zip(pending, pipe.execute(), strict=True):
                got = flatten(reply)
                out += got
                if not got:
                    self._pending_parts.discard(p)
                elif any(entry_id not in self.attempts for _, entry_id, _ in got):
                    draining.add(p)  # its own backlog first; waiting entries alone do not hold it up
        fresh = [p for p in owned if p not in draining]
        now = time.monotonic()
        pipe = self.client.pipeline(transaction=False)
        claiming = (now - self._last_claim) * 1000 >= self.config.claim_every_ms
        if claiming:  # entries pending under another consumer name (a worker without leases)
            self._last_claim = now
            for p in fresh:
                pipe.xautoclaim(
                    keys.stream_key(p), GROUP, consumer_of(p), self.config.claim_idle_ms, "0-0",
                    count=self.config.batch_max,
                )  # fmt: skip
        each = max(10, self.config.batch_max // max(1, len(fresh)))
        for p in fresh:
            pipe.xreadgroup(GROUP, consumer_of(p), {keys.stream_key(p): ">"}, count=each)
        replies = pipe.execute() if fresh else []
        if claiming:
            for p, reply in zip(fresh, replies[: len(fresh)], strict=True):
                out += [(keys.stream_key(p), text(i), f) for i, f in reply[1] if f]
            replies = replies[len(fresh) :]
        for reply in replies:
            out += flatten(reply)
        if out:
            self._idle_polls = 0
        else:  # nothing anywhere: poll less often, up to block_ms, so an idle worker costs little
            self._idle_polls = min(self._idle_polls + 1, 16)
            time.sleep(min(self.config.poll_ms * 2 ** (self._idle_polls - 1), self.config.block_ms) / 1000)
        return unique(out)

    def read(self) -> list[tuple[str, str, dict[bytes, bytes]]]:
        if self.leases is not None:
            return self.read_leased()
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
        holds: dict[tuple[str, str], str] = {}  # a replayed dead letter: (stream, id) -> its hold
        for stream, entry_id, fields in items:
            if fields.get(b"dl"):
                holds[(stream, entry_id)] = text(fields[b"dl"])
            try:
                entry = self.to_entry(entry_id, fields, originals)
                entries.append((stream, entry_id, entry))
                if entry.journal.kind == "settle":
                    originals[entry.journal.settlement_id] = (entry.journal, entry.transfers)
            except (PostingError, UnbalancedEntry, json.JSONDecodeError, UnicodeDecodeError) as exc:
                poison.append((stream, entry_id, fields, str(exc)))
            except DeferEntry as exc:
                # waits however long it takes, never dead-lettered for waiting: its settlement may be in a
                # dead consumer's pending list (claimed after claim_idle_ms) or being replayed
                deferred += 1
                self.stats.deferred += 1
                metrics.POSTING_FAILURES.labels("deferred").inc()
                count, first = self.attempts.get(entry_id, (0, time.monotonic()))
                self.attempts[entry_id] = (count + 1, first)
                if count == 0:
                    log.info("%s %s waits: %s", stream, entry_id, exc)
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
                    self._own_pending = True  # tried again next loop (not after a claim's idle time)
            entries = good
        self.database.ok()
        self.stats.batches += 1
        self.stats.booked += len(new)
        self.stats.duplicates += len(entries) - len(new)
        for journal in new:
            metrics.POSTED.labels(journal.kind).inc()
            if len(self.regions_booked) < self.config.regions_max:
                self.regions_booked.add(journal.inst_region)
        metrics.POSTING_DUPLICATES.inc(len(entries) - len(new))
        self.acknowledge([(s, i) for s, i, _ in entries], holds)
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
        record = archived(fields.get(b"rec"))  # what the commit wrote: the ledger keeps it
        if kind == "settle":
            journal, transfers = route(event)
            return Entry(journal, transfers, entry_id, record)
        if kind not in ("reverse", "refund", "adjust"):
            raise PostingError(f"unknown entry type {kind!r}")
        sid = str(event.get("sid", ""))
        if kind == "reverse" and "total" not in event:  # a reversal event of the first format
            found = originals.get(sid) or self.ledger.original(sid)
            if found is None:
                raise DeferEntry(f"reversal of {sid} before its settlement is booked")
            journal, transfers = mirror(found[0], found[1], event)
            return Entry(journal, transfers, entry_id, record)
        journal, transfers = route(event)  # a malformed event is poison now, not in two minutes
        if journal.kind != kind:
            raise PostingError(f"entry type {kind!r} carries a {journal.kind!r} event")
        # a correction is booked after the settlement it corrects, so no statement shows it alone
        if sid not in originals and not self.ledger.settled([sid]):
            raise DeferEntry(f"{kind} of {sid} before its settlement is booked")
        return Entry(journal, transfers, entry_id, record)

    def note_failure(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        reason: str,
        poison: list[tuple[str, str, dict[bytes, bytes], str]],
    ) -> None:
        """Count a failure; after attempts_max failures the entry is dead-lettered."""
        count, first = self.attempts.get(entry_id, (0, time.monotonic()))
        count += 1
        self.attempts[entry_id] = (count, first)
        if count >= self.config.attempts_max:
            if not fields:
                found = self.client.xrange(stream, entry_id, entry_id) or []
                fields = dict(found[0][1]) if found else {}  # type: ignore[arg-type]
            poison.append((stream, entry_id, fields, f"{reason} (after {count} attempts)"))

    def acknowledge(
        self, done: list[tuple[str, str]], holds: dict[tuple[str, str], str] | None = None
    ) -> None:
        """Acknowledged and deleted at once (the ledger holds them now; the stream stays short), releasing
        the holds of replayed dead letters among them in the same script."""
        by_stream: dict[str, tuple[list[str], list[str]]] = {}
        for stream, entry_id in done:
            ids, released = by_stream.setdefault(stream, ([], []))
            ids.append(entry_id)
            hold = (holds or {}).get((stream, entry_id))
            if hold:
                released.append(hold)
            self.attempts.pop(entry_id, None)
        if not by_stream:
            return
        if self.cluster:
            self.acknowledge_per_slot(by_stream)
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, (ids, released) in by_stream.items():
            pipe.evalsha(self._ack.sha, 2, stream, HELD, GROUP, len(ids), *ids, *released)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):  # Redis restarted
            for stream, (ids, released) in by_stream.items():
                self._ack(keys=[stream, HELD], args=[GROUP, len(ids), *ids, *released])
        else:
            for r in results:
                if isinstance(r, Exception):
                    raise r

    def acknowledge_per_slot(self, by_stream: dict[str, tuple[list[str], list[str]]]) -> None:
        """Cluster: the holds released first (their own slot), then each stream's entries (see
        ACK_AND_DELETE)."""
        released = [h for _, hs in by_stream.values() for h in hs]
        if released:
            self.client.zrem(HELD, *released)
        pipe = self.client.pipeline(transaction=False)
        for stream, (ids, _) in by_stream.items():
            pipe.execute_command("EVALSHA", self._ack.sha, 1, stream, GROUP, len(ids), *ids)  # type: ignore[no-untyped-call]
        results = pipe.execute(raise_on_error=False)
        for (stream, (ids, _)), r in zip(by_stream.items(), results, strict=True):
            if isinstance(r, redis.exceptions.NoScriptError):  # Redis restarted
                self._ack(keys=[stream], args=[GROUP, len(ids), *ids])
            elif isinstance(r, Exception):
                raise r

    def dead_letter(self, stream: str, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
        """Never dropped: the entry goes, with why, to the dead-letter stream, holds the posted-through
        watermark at its time, and is acknowledged, all in one script (gateway/posting/deadletters.py)."""
        replaced = text(fields.get(b"dl", b""))  # a replayed dead letter failing again: its hold moves over
        t0 = text(fields.get(b"dl_t0", b"")) or str(deadletters.entry_ms(entry_id))
        record: list[Any] = [
            "stream", stream, "id", entry_id, "reason", reason, "t0", t0,
            "at", str(int(time.time() * 1000)), "consumer", self.config.consumer,
        ]  # fmt: skip
        for k, v in fields.items():
            if k not in (b"dl", b"dl_t0"):
                record += [b"f:" + k, v]
        if self.cluster:  # two steps, the letter and its hold first (gateway/posting/deadletters.py)
            dl_id = self._dead_letter_record(
                keys=[DEADLETTER, HELD, deadletters.marker_key(stream, entry_id)],
                args=[entry_id, t0, replaced, deadletters.MARKER_TTL_MS, *record],
            )
            self._ack(keys=[stream], args=[GROUP, 1, entry_id])
        else:
            dl_id = self._dead_letter(
                keys=[DEADLETTER, HELD, stream], args=[GROUP, entry_id, t0, replaced, *record]
            )
        self.attempts.pop(entry_id, None)
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.inc()
        log.error("dead-lettered %s %s as %s: %s", stream, entry_id, text(dl_id), reason)


def archived(raw: bytes | None) -> Record | None:
    """The commit's record of an entry (absent from entries of the first formats). Malformed, it is
    poison like a malformed event: the ledger must not keep an answer it cannot give back."""
    if not raw:
        return None
    try:
        return Record(raw.decode(), ledger_record_from(raw))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise PostingError(f"malformed commit record: {exc!r}") from None


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
