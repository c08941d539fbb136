"""The settlement store on Redis. Two commands per settlement on the common path, each one round trip:
a Lua read of the person (record, state, the year's plan-years and what is recorded under the message
id, with its stored answer) and the generic Lua commit (adapters/lua/commit.lua). A script is one
command for redis-py, which costs far less client CPU than a pipeline of several.

Single node: the institution-wide claim of the message id is checked and set inside the commit (the
claim key lives in its own slot, which only a cluster would refuse). Cluster: the claim is a SET NX GET
of its own before the commit (`claims_inline=False`, forced on a cluster client); a claim left by a crash
between the two holds the same value, so the terminal's retry passes it. That is the one extra round
trip a cluster costs a Settle (measured in docs/SCALING.md). In replica mode the commit and its WAIT go to
the slot's node on one connection (adapters/redis_slots.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import cachetools
import redis.asyncio as aioredis
import redis.exceptions

from adapters import redis_keys as keys
from adapters import settlement_records as rec
from adapters.citydata_files import CARD_STATUSES
from adapters.redis_batch import ScriptBatcher
from adapters.redis_slots import on_slot_node
from adapters.redis_topology import is_cluster
from adapters.settlement_store import (
    Commit,
    CommitOutcome,
    MessageRecord,
    PersonSnapshot,
    StoredSettlement,
    StoreRefused,
)
from gateway.engine.model import Person
from gateway.engine.plan_year import PLAN_YEARS_KEPT
from rules_cache import notices, records
from rules_cache.reader import DataError
from telemetry import metrics

AUDIT = logging.getLogger("medsettle.audit")  # by name: the gateway configures where it goes
PERSON_PARSED_MAX = 50_000  # parsed person records kept per process, keyed by their bytes
CARD_CACHE_MAX = 200_000
CARD_CACHE_TTL_S = 60  # a reassigned card is also evicted at once over pub/sub

# bound once: a labelled child is a dict lookup per call otherwise, on the hot path
SETTLEMENTS_PER_PIPELINE_MAX = 500
CARD_HIT = metrics.CACHE.labels("l1", "card", "hit")
CARD_MISS = metrics.CACHE.labels("l1", "card", "miss")
PERSON_HIT = metrics.CACHE.labels("l1", "person_record", "hit")
PERSON_MISS = metrics.CACHE.labels("l1", "person_record", "miss")
READ_SECONDS = metrics.REDIS_SECONDS.labels("read_person")
COMMIT_SECONDS = metrics.REDIS_SECONDS.labels("commit")
CLAIM_SECONDS = metrics.REDIS_SECONDS.labels("claim")
REFUSED = metrics.STORE_REFUSED
# KEYS: a claim. ARGV: the value this request set. Deleted only while it holds that value.
RELEASE_CLAIM = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
IDEMPOTENCY_RETENTION_DAYS = 7  # a message record stays this long after its last use, then leaves Redis


def text(value: Any) -> str:
    """redis-py is typed as bytes | str; this client runs with decode_responses=False (bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def lua(name: str) -> str:
    return resources.files("adapters").joinpath("lua", name).read_text(encoding="utf-8")


def same_person(claim: str, person_id: str) -> bool:
    return claim.split("|", 1)[0] == person_id


def record_digest(raw: bytes) -> str:
    """The version of a person record: the first 16 hex digits of its SHA-1 (what put_person.lua keeps
    an earlier version under, with redis.sha1hex)."""
    return hashlib.sha1(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ParsedPerson:
    person: Person
    card_status: str
    digest: str


class Ops:
    """The operand list of one commit.lua call, keys numbered as they are first used."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[Any] = []
        self._index: dict[str, int] = {}

    def key(self, name: str) -> int:
        if name not in self._index:
            self.keys.append(name)
            self._index[name] = len(self.keys)
        return self._index[name]

    def op(self, letter: str, name: str, *operands: Any) -> None:
        self.args += [letter, self.key(name), *operands]

    def fields(self, letter: str, name: str, fields: dict[str, Any]) -> None:
        """HSET/XADD pairs; for SADD (S) the keys are the members and the values are ignored."""
        if not fields:
            return
        flat: list[Any] = []
        for field, value in fields.items():
            flat += [field] if letter == "S" else [field, value]
        self.args += [letter, self.key(name), len(fields), *flat]

    def delete(self, name: str, fields: Sequence[str]) -> None:
        if fields:
            self.args += ["D", self.key(name), len(fields), *fields]


class ReplicaWaitFailed(redis.exceptions.TimeoutError):
    """The commit is on the primary but WAIT saw fewer replicas than required in time: the terminal gets
    UNAVAILABLE "outcome unknown" (the servicer maps redis TimeoutError so), never a success; its resend
    with the same message id finds the commit."""


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        index: keys.IndexKeys | None = None,
        claims_inline: bool = True,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
        idempotency_retention_days: int = IDEMPOTENCY_RETENTION_DAYS,
        plan_years_kept: int = PLAN_YEARS_KEPT,
    ) -> None:
        self.client = client
        self.plan_years_kept = plan_years_kept  # an opening year's hash and old record versions expire after
        # every resend that finds its record keeps it this much longer (read_person.lua)
        self.idempotency_ttl_ms = idempotency_retention_days * 86_400_000
        self._index = index  # None: a store that never looks a card up (the auditor)
        self.cluster = is_cluster(client)
        # a cluster refuses a script over two slots: the claim is a command of its own there
        self.claims_inline = claims_inline and not self.cluster
        self.wait_replicas = wait_replicas  # replica durability: WAIT for this many after every commit
        self.wait_timeout_ms = wait_timeout_ms
        self._batch = ScriptBatcher(client)
        self._read = client.register_script(lua("read_person.lua"))
        self._commit = client.register_script(lua("commit.lua"))
        self._put = client.register_script(lua("put_person.lua"))
        self._parsed: cachetools.LRUCache[bytes, ParsedPerson] = cachetools.LRUCache(PERSON_PARSED_MAX)
        self._cards: cachetools.TTLCache[str, str] = cachetools.TTLCache(CARD_CACHE_MAX, CARD_CACHE_TTL_S)

    async def preload_scripts(self) -> None:
        """Load the Lua scripts once at start, so the first settlement does not pay NOSCRIPT + load."""
        for script in (self._read, self._commit, self._put):
            await self.client.script_load(script.script)

    async def script(self, script: Any, script_keys: list[str], args: list[Any]) -> Any:
        """One coalesced script call. Redis answering with an error (a key of the wrong type under our
        name: data that is not ours) is the store refusing, never an unknown outcome: nothing was
        written, since every script checks before it writes."""
        try:
            return await self._batch.call(script, script_keys, args)
        except redis.exceptions.ResponseError as exc:
            REFUSED.inc()
            raise StoreRefused(str(exc)) from exc

    # ---------------------------------------------------------------- reads

    @property
    def index(self) -> keys.IndexKeys:
        if self._index is None:
            raise RuntimeError("this store was made without the index key: it cannot look cards up")
        return self._index

    async def verify_index(self) -> None:
        """Refuses to serve with an index key other than the one the data was written with (each
        process would find no card, silently); the first process writes the check."""
        value = self.index.check_value
        held = await self.client.set(keys.INDEX_CHECK, value, nx=True, get=False)
        if not held and text(await self.client.get(keys.INDEX_CHECK)) != value:
            raise StoreRefused(
                "this process's index key is not the one the persons in Redis were written with:"
                " give every process the deployment's key ($MEDSETTLE_INDEX_KEY or --index-key-file)"
            )

    async def person_id_for(self, card_no: str | None, id_number: str | None) -> str | None:
        key = self.index.lookup(card_no, id_number)  # a keyed hash: the number itself goes nowhere
        cached = self._cards.get(key)
        if cached is not None:
            CARD_HIT.inc()
            return cached
        CARD_MISS.inc()
        raw = await self.client.get(key)
        if raw is None:
            return None
        person_id = text(raw)
        self._cards[key] = person_id
        return person_id

    def forget_cards(self, lookups: list[str]) -> None:
        for lookup in lookups:
            self._cards.pop(lookup, None)

    def parse_person(self, raw: bytes, person_id: str) -> ParsedPerson:
        parsed = self._parsed.get(raw)
        (PERSON_MISS if parsed is None else PERSON_HIT).inc()
        if parsed is None:
            data = json.loads(raw)
            parsed = ParsedPerson(
                records.person(data, "redis", person_id),
                data.get("card_status", "normal"),
                record_digest(raw),
            )
            self._parsed[raw] = parsed
        return parsed

    async def read_person(
        self, person_id: str, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot | None:
        """One round trip: the record, the state, every plan-year of `year` and, when `message` =
        (institution, message id) is given, what is recorded under it and the answer stored for it."""
        partition = keys.partition_of(person_id)
        read_keys = [keys.person_key(person_id), keys.state_key(person_id), keys.year_key(person_id, year)]
        if message is not None:
            read_keys.append(keys.idem_key(partition, *message))
        with READ_SECONDS.time():
            reply = await self.script(
                self._read, read_keys, [keys.settlement_prefix(partition), self.idempotency_ttl_ms]
            )
        raw, ver, bal, year_flat, message_flat, answer = reply
        if raw is None:
            return None
        parsed = self.parse_person(raw, person_id)
        flat = {text(year_flat[i]): text(year_flat[i + 1]) for i in range(0, len(year_flat), 2)}
        earlier = rec.message_from(*message, message_flat) if message is not None else None
        return PersonSnapshot(
            parsed.person,
            parsed.digest,
            parsed.card_status,
            int(ver or 0),
            int(bal or 0),
            year,
            rec.years_from(year, flat),
            earlier,
            bytes(answer) if answer else b"",
        )

    async def message(self, person_id: str, institution: str, message_id: str) -> MessageRecord | None:
        flat = await self.client.hgetall(keys.idem_key(keys.partition_of(person_id), institution, message_id))
        items = [x for kv in flat.items() for x in kv]
        return rec.message_from(institution, message_id, items)

    async def settlement(self, settlement_id: str) -> StoredSettlement | None:
        return (await self.settlements([settlement_id]))[0]

    async def settlements(self, settlement_ids: Sequence[str]) -> list[StoredSettlement | None]:
        """Many settlements, SETTLEMENTS_PER_PIPELINE_MAX at a time: one pipeline of the whole store (the
        auditor's 195,000 settlements after a 10-minute fault campaign) outlasts the client's read
        timeout and blocks Redis for every other client meanwhile."""
        valid = []
        for sid in settlement_ids:
            try:
                keys.settlement_key(sid)
                valid.append(sid)
            except ValueError:  # not a settlement id at all
                continue
        replies: dict[str, Any] = {}
        for start in range(0, len(valid), SETTLEMENTS_PER_PIPELINE_MAX):
            chunk = valid[start : start + SETTLEMENTS_PER_PIPELINE_MAX]
            pipe = self.client.pipeline(transaction=False)
            for sid in chunk:
                pipe.hgetall(keys.settlement_key(sid))
            replies.update(zip(chunk, await pipe.execute(), strict=True))
        return [
            rec.settlement_from(sid, replies[sid]) if replies.get(sid) else None for sid in settlement_ids
        ]

    async def person_version(self, person_id: str, digest: str) -> Person | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.person_key(person_id))
        pipe.get(keys.person_version_key(person_id, digest))
        current, earlier = await pipe.execute()
        for raw in (current, earlier):
            if raw is not None and record_digest(raw) == digest:
                return self.parse_person(raw, person_id).person
        return None

    async def balance(self, person_id: str) -> int:
        return int(await self.client.hget(keys.state_key(person_id), "bal") or 0)

    async def opening_balance(self, person_id: str) -> int | None:
        """The balance before the settlements in Redis: the core system's first export (bal0), less
        what the settlements retention has since moved to the ledger paid from the account (arch)."""
        raw, archived = await self.client.hmget(keys.state_key(person_id), ["bal0", "arch"])
        return int(raw) - int(archived or 0) if raw is not None else None

    # ---------------------------------------------------------------- the whole keyspace, for audits

    async def people(self) -> dict[str, set[int]]:
        """Every person with plan-years, and the years they have (one SCAN of the keyspace)."""
        out: dict[str, set[int]] = {}
        async for key in self.client.scan_iter(match="ms:{p*}:year:*", count=1000):
            _, _, person_id, year = text(key).rsplit(":", 3)
            out.setdefault(person_id, set()).add(int(year))
        return out

    async def every_settlement(self) -> list[StoredSettlement]:
        sids = [
            text(k).rsplit(":", 1)[1] async for k in self.client.scan_iter(match="ms:{p*}:stl:*", count=1000)
        ]
        found = await self.settlements(sids)
        return [s for s in found if s is not None]

    async def queued_events(self) -> list[dict[str, Any]]:
        """Posting events still in the partition streams (committed, not yet booked)."""
        out: list[dict[str, Any]] = []
        for p in range(keys.PARTITIONS):  # a page at a time: a backlog may be large
            after = "-"
            while True:
                page = self.client.xrange(keys.stream_key(p), min=after, count=SETTLEMENTS_PER_PIPELINE_MAX)
                entries: list[tuple[bytes, dict[bytes, bytes]]] = await page  # type: ignore[assignment]
                out += [json.loads(fields[b"event"]) for _, fields in entries]
                if len(entries) < SETTLEMENTS_PER_PIPELINE_MAX:
                    break
                after = "(" + text(entries[-1][0])
        return out

    # ---------------------------------------------------------------- commits

    def operations(self, c: Commit, with_claims: bool) -> Ops:
        pid = c.person_id
        partition = keys.partition_of(pid)
        ttl = self.idempotency_ttl_ms
        ops = Ops()
        state = keys.state_key(pid)
        ops.op("V", state, c.expected_version, c.expected_version + 1)
        for m in c.messages:
            ops.op("A", keys.idem_key(partition, m.institution, m.message_id))
        if with_claims:
            for m in c.messages:
                ops.op("C", keys.claim_key(m.institution, m.message_id), m.claim, ttl)
        ops.fields("I", state, {"bal": str(c.balance_fen)})
        for old, new in c.years:
            texts, ints, gone = rec.year_diff(old, new)
            year = keys.year_key(pid, new.key.year)
            ops.fields("H", year, texts)
            ops.fields("I", year, ints)
            ops.delete(year, gone)
        written: dict[str, dict[str, bytes | str]] = {}  # settlement id -> the fields this commit writes
        plans: dict[str, str] = {}
        for s in c.new:
            fields = rec.settlement_fields(
                s.settlement_id, s.person_id, s.plan, s.institution, s.message_id, s.response, s.live, s.route
            )
            ops.fields("H", keys.settlement_key(s.settlement_id), fields)
            ops.fields("S", keys.plan_year_index_key(partition, s.plan.year), {s.settlement_id: ""})
            written[s.settlement_id], plans[s.settlement_id] = fields, str(s.plan)
        for ch in c.changes:
            fields = {}
            if ch.reversal is not None:
                fields.update({"status": "reversed", "rev": ch.reversal})
            if ch.live is not None:
                fields.update(rec.live_fields(ch.live))
            if ch.correction is not None:
                fields.update({f"x:{ch.correction_no}": ch.correction, "xn": str(ch.correction_no)})
            if ch.answer is not None:
                fields[f"f:{ch.correction_no}"] = ch.answer
            ops.fields("H", keys.settlement_key(ch.settlement_id), fields)
            written.setdefault(ch.settlement_id, {}).update(fields)
        for m in c.messages:
            idem = keys.idem_key(partition, m.institution, m.message_id)
            ops.fields("H", idem, rec.message_fields(m))
            ops.op("E", idem, ttl)
        stream = keys.stream_key(partition)
        messages: Sequence[MessageRecord] = c.messages  # the ledger keeps them with the commit's first entry
        for event in c.events:
            sid = str(event["sid"])
            record = rec.LedgerRecord(
                pid,
                plans.get(sid, ""),
                c.expected_version + 1,
                c.balance_fen,
                {rec.as_bytes(k): rec.as_bytes(v) for k, v in written.pop(sid, {}).items()},
                messages,
            )
            messages = ()
            ops.fields(
                "X",
                stream,
                {
                    "type": event["type"], "sid": sid, "event": rec.dumps(dict(event)),
                    "rec": rec.ledger_record_json(record),
                },
            )  # fmt: skip
        return ops

    async def commit(self, commit: Commit) -> CommitOutcome:
        made: list[MessageRecord] = []  # claims this commit created (cluster mode)
        if not self.claims_inline:
            held = await self.claim(commit.messages, made)
            if held is not None:
                return CommitOutcome("CLAIMED", detail=held)
        ops = self.operations(commit, self.claims_inline)
        try:
            with COMMIT_SECONDS.time():
                if self.wait_replicas:
                    reply, confirmed = await self.commit_and_wait(ops)
                else:
                    reply, confirmed = await self.script(self._commit, ops.keys, ops.args), 0
        except StoreRefused:
            await self.release(made)
            raise
        status = text(reply[0])
        if status == "REFUSED":
            await self.release(made)
        if status == "OK":
            if confirmed < self.wait_replicas:
                metrics.REPLICA_WAIT_FAILURES.inc()
                AUDIT.warning(
                    "commit unconfirmed by replicas",
                    extra={
                        "event": "commit_unconfirmed", "replicas": confirmed, "required": self.wait_replicas,
                        "settlement_ids": [s.settlement_id for s in commit.new]
                        + [c.settlement_id for c in commit.changes],
                        "message_ids": [f"{m.institution}:{m.message_id}" for m in commit.messages],
                    },
                )  # fmt: skip
                raise ReplicaWaitFailed(
                    f"the commit is on the primary; {confirmed} of {self.wait_replicas} replica(s) confirmed"
                    f" it within {self.wait_timeout_ms} ms: outcome unknown, resend with the same message id"
                )
            return CommitOutcome("OK")
        if status == "CONFLICT":
            return CommitOutcome("CONFLICT")
        if status == "CLAIMED":
            return CommitOutcome("CLAIMED", detail=text(reply[1]))
        if status == "EXISTS":
            name = ops.keys[int(reply[1]) - 1]
            m = next(m for m in commit.messages if name.endswith(f":idem:{m.institution}:{m.message_id}"))
            return CommitOutcome("EXISTS", rec.message_from(m.institution, m.message_id, reply[2]))
        REFUSED.inc()
        raise StoreRefused(text(reply[1]))

    async def commit_and_wait(self, ops: Ops) -> tuple[Any, int]:
        """Replica durability: the commit script and WAIT on one connection (one pipeline), since WAIT
        waits for the writes of its own connection only. Not coalesced with other requests' scripts: the
        WAIT holds its connection up to wait_timeout_ms. Returns the script's reply and the replicas that
        confirmed (WAIT answers with the count, whatever happened)."""
        for _ in range(2):  # a restarted Redis has lost its scripts: NOSCRIPT ran nothing, load and resend
            reply, confirmed = await on_slot_node(
                self.client,
                ops.keys[0],
                ("EVALSHA", self._commit.sha, len(ops.keys), *ops.keys, *ops.args),
                ("WAIT", self.wait_replicas, self.wait_timeout_ms),
            )
            if isinstance(reply, redis.exceptions.NoScriptError):
                await self.client.script_load(self._commit.script)
                continue
            if isinstance(reply, redis.exceptions.ResponseError):
                REFUSED.inc()
                raise StoreRefused(str(reply))
            if isinstance(reply, Exception):
                raise reply
            return reply, int(confirmed) if isinstance(confirmed, int) else 0
        raise StoreRefused("the commit script could not be loaded")

    async def confirm_replicated(self, person_id: str, institution: str, message_id: str) -> None:
        """Replica mode, before a resend is answered: the original commit may be the one whose WAIT
        failed, so it is not known to be on a replica. A write of our own (renewing the message record's
        window) and WAIT on one connection prove it: replication is in order, so a replica that has our
        write has every write before it. Fewer replicas in time: ReplicaWaitFailed, outcome unknown."""
        if not self.wait_replicas:
            return
        idem = keys.idem_key(keys.partition_of(person_id), institution, message_id)
        renewed, confirmed = await on_slot_node(
            self.client,
            idem,
            ("PEXPIRE", idem, self.idempotency_ttl_ms),
            ("WAIT", self.wait_replicas, self.wait_timeout_ms),
        )
        for reply in (renewed, confirmed):
            if isinstance(reply, Exception):
                raise reply
        if int(confirmed) < self.wait_replicas:
            metrics.REPLICA_WAIT_FAILURES.inc()
            raise ReplicaWaitFailed(
                f"the answer is recorded on the primary; {confirmed} of {self.wait_replicas} replica(s)"
                f" confirmed it within {self.wait_timeout_ms} ms: outcome unknown, resend"
            )

    async def release(self, made: Sequence[MessageRecord]) -> None:
        """A commit the store refused writes nothing, so neither does its claim: the claims it created are
        removed (each only while it still holds our value). Not after CONFLICT or EXISTS: the request goes
        on (re-read, the stored answer) and its claim with it."""
        for m in made:
            await self.client.eval(RELEASE_CLAIM, 1, keys.claim_key(m.institution, m.message_id), m.claim)

    async def claim(self, messages: Sequence[MessageRecord], made: list[MessageRecord]) -> str | None:
        """Cluster mode: claim each message id in its own slot before the commit. Returns the holder of a
        claim that is another person's, or None. A claim of the same person for another kind (a Settle
        and the reversal voiding its message id, racing) is left to the commit: the message record in
        the person's slot (commit.lua's A, checked before the claim inline) decides between them, as it
        does on one node, and the claim only keeps two persons apart."""
        for m in messages:
            with CLAIM_SECONDS.time():
                try:
                    held = await self.client.set(
                        keys.claim_key(m.institution, m.message_id),
                        m.claim,
                        nx=True,
                        get=True,
                        px=self.idempotency_ttl_ms,
                    )
                except redis.exceptions.ResponseError as exc:  # not a string: data that is not ours
                    REFUSED.inc()
                    await self.release(made)
                    raise StoreRefused(str(exc)) from exc
            if held is None:
                made.append(m)
            if held is not None and text(held) != m.claim and not same_person(text(held), m.person_id):
                return text(held)
        return None

    # ---------------------------------------------------------------- person import

    async def put_person(self, record: dict[str, Any], source: str = "import") -> None:
        """Write one person from the core system's export (put_person.lua), then the card and ID index.
        The static record always replaces the old one; the balance and the year's opening accumulators are
        taken only for a person new to the gateway."""
        status = record.get("card_status", "normal")
        if status not in CARD_STATUSES:
            raise DataError(source, "card_status", f"{status!r} is not one of: {', '.join(CARD_STATUSES)}")
        person = records.person(record, source, "")
        state = records.person_state(record, source, "")
        plan = records.opening_plan(record, person, source, "")
        pid = person.person_id
        static = {k: v for k, v in record.items() if k not in ("account_balance_fen", "accumulators")}
        raw = json.dumps(static, ensure_ascii=False, sort_keys=True)
        opening: list[Any] = []
        if plan is not None and state.year:
            prefix = f"{plan[0]}:{plan[1].value}"
            for name, value in sorted(state.accumulators.items()):
                if value:
                    opening += [f"{prefix}|o|{name}", str(value), f"{prefix}|a|{name}", str(value)]
        year = state.year or 0
        window_ends = (
            int((datetime(year + self.plan_years_kept, 1, 1, tzinfo=UTC) + timedelta(days=31)).timestamp())
            if year
            else 0  # no opening accumulators: no year hash is written
        )
        reply = await self._put(
            keys=[keys.person_key(pid), keys.state_key(pid), keys.year_key(pid, year)],
            args=[
                raw, str(state.account_balance_fen), keys.person_version_key(pid, ""),
                str(window_ends), self.plan_years_kept * 366 * 86_400_000, *opening,
            ],
        )  # fmt: skip
        if text(reply[0]) == "REFUSED":
            REFUSED.inc()
            raise StoreRefused(text(reply[1]))
        old_raw = reply[0]
        index = self.index
        new_card, new_id = index.card(person.card_no), index.id_number(person.id_number)
        stale = []
        if old_raw:
            old = json.loads(old_raw)
            stale = [index.card(str(old.get("card_no"))), index.id_number(str(old.get("id_number")))]
            for gone in {k for k in stale if k not in (new_card, new_id)}:  # a card or ID number replaced
                await self.client.delete(gone)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(new_card, pid)
        pipe.set(new_id, pid)
        await pipe.execute()
        await notices.publish(self.client, keys.PERSON_CHANNEL, json.dumps(sorted({*stale, new_card})))
