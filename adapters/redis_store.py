"""Person state, settlements and idempotency records in Redis. Two Redis commands per settlement on the
common path, each one round trip: a Lua read of the person (record, state, accumulators, and any earlier
answer under the same message id), and a Lua commit. A script is one command for redis-py, which
costs far less client CPU than a pipeline of four."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cachetools
import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters.citydata_files import CARD_STATUSES
from adapters.redis_batch import ScriptBatcher
from gateway.engine.model import Person, PersonState
from rules_cache import records
from rules_cache.reader import DataError
from telemetry import metrics

PERSON_PARSED_MAX = 50_000  # parsed person records kept per process, keyed by their bytes
CARD_CACHE_MAX = 200_000
CARD_CACHE_TTL_S = 60  # a reassigned card is also evicted at once over pub/sub

# bound once: a labelled child is a dict lookup per call otherwise, on the hot path
CARD_HIT = metrics.CACHE.labels("l1", "card", "hit")
CARD_MISS = metrics.CACHE.labels("l1", "card", "miss")
PERSON_HIT = metrics.CACHE.labels("l1", "person_record", "hit")
PERSON_MISS = metrics.CACHE.labels("l1", "person_record", "miss")
READ_SECONDS = metrics.REDIS_SECONDS.labels("read_person")
COMMIT_SECONDS = metrics.REDIS_SECONDS.labels("commit")
REVERSE_SECONDS = metrics.REDIS_SECONDS.labels("reverse")


def raw_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value or "").encode()


def text(value: Any) -> str:
    """redis-py is typed as bytes | str; this client runs with decode_responses=False (bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def lua(name: str) -> str:
    return resources.files("adapters").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class PersonSnapshot:
    person: Person
    card_status: str
    state: PersonState
    version: int  # the state version the split is computed from; the commit checks it
    earlier: tuple[str, str, bytes] | None = None  # (payload hash, kind, response) under this message id


@dataclass(frozen=True, slots=True)
class CommitResult:
    status: str  # OK, DUP, MISMATCH, CONFLICT, NOT_FOUND
    response: bytes = b""


@dataclass(frozen=True, slots=True)
class StoredSettlement:
    settlement_id: str
    status: str  # settled | reversed
    response: bytes  # SettleResponse bytes
    reversal: bytes  # ReverseResponse bytes, empty unless reversed
    person_id: str
    year: int
    institution: str


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._batch = ScriptBatcher(client)
        self._read = client.register_script(lua("read_person.lua"))
        self._commit = client.register_script(lua("commit_settlement.lua"))
        self._reverse = client.register_script(lua("reverse_settlement.lua"))
        self._parsed: cachetools.LRUCache[bytes, tuple[Person, str]] = cachetools.LRUCache(PERSON_PARSED_MAX)
        self._cards: cachetools.TTLCache[str, str] = cachetools.TTLCache(CARD_CACHE_MAX, CARD_CACHE_TTL_S)

    async def preload_scripts(self) -> None:
        """Load the Lua scripts once at start, so the first settlement does not pay NOSCRIPT + load."""
        for script in (self._read, self._commit, self._reverse):
            await self.client.script_load(script.script)

    # ---------------------------------------------------------------- reads

    async def person_id_for(self, card_no: str | None, id_number: str | None) -> str | None:
        lookup = f"c:{card_no}" if card_no else f"i:{id_number}"
        cached = self._cards.get(lookup)
        if cached is not None:
            CARD_HIT.inc()
            return cached
        CARD_MISS.inc()
        key = keys.card_key(card_no) if card_no else keys.id_number_key(id_number or "")
        raw = await self.client.get(key)
        if raw is None:
            return None
        person_id = text(raw)
        self._cards[lookup] = person_id
        return person_id

    def forget_cards(self, lookups: list[str]) -> None:
        for lookup in lookups:
            self._cards.pop(lookup, None)

    async def read_person(
        self, person_id: str, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot | None:
        """One round trip: the record, the state, the year's accumulators and, when `message` =
        (institution, message id) is given, what was already committed under that message id."""
        read_keys = [keys.person_key(person_id), keys.state_key(person_id), keys.acc_key(person_id, year)]
        if message is not None:
            read_keys.append(keys.idem_key(keys.partition_of(person_id), *message))
        with READ_SECONDS.time():
            reply = await self._batch.call(self._read, read_keys, [])
        raw, ver, bal, acc_flat, earlier_hash, earlier_kind, earlier_response = reply
        if raw is None:
            return None
        earlier = None
        if earlier_hash is not None:
            earlier = (text(earlier_hash), text(earlier_kind), raw_bytes(earlier_response))
        parsed = self._parsed.get(raw)
        (PERSON_MISS if parsed is None else PERSON_HIT).inc()
        if parsed is None:
            data = json.loads(raw)
            parsed = (records.person(data, "redis", person_id), data.get("card_status", "normal"))
            self._parsed[raw] = parsed
        acc = {text(acc_flat[i]): int(acc_flat[i + 1]) for i in range(0, len(acc_flat), 2)}
        state = PersonState(int(bal or 0), year, acc)
        return PersonSnapshot(parsed[0], parsed[1], state, int(ver or 0), earlier)

    async def settlement(self, settlement_id: str) -> StoredSettlement | None:
        try:
            key = keys.settlement_key(settlement_id)
        except ValueError:
            return None
        fields = await self.client.hmget(key, "status", "resp", "rev", "pid", "year", "inst")
        status, resp, rev, pid, year, inst = fields
        if status is None:
            return None
        return StoredSettlement(
            settlement_id,
            text(status),
            raw_bytes(resp),
            raw_bytes(rev),
            text(pid),
            int(text(year)),
            text(inst),
        )

    async def balance(self, person_id: str) -> int:
        return int(await self.client.hget(keys.state_key(person_id), "bal") or 0)

    async def settlement_id_for_message(
        self, partition: int, institution: str, message_id: str
    ) -> str | None:
        sid = await self.client.hget(keys.idem_key(partition, institution, message_id), "sid")
        return text(sid) if sid else None

    # ---------------------------------------------------------------- commits

    async def commit_settlement(
        self,
        *,
        partition: int,
        institution: str,
        message_id: str,
        payload_hash: str,
        snapshot: PersonSnapshot,
        debit_fen: int,
        deltas: dict[str, int],
        settlement_id: str,
        response: bytes,
        event: dict[str, Any],
    ) -> CommitResult:
        pid = snapshot.person.person_id
        year = snapshot.state.year
        args: list[Any] = [
            payload_hash,
            snapshot.version,
            debit_fen,
            settlement_id,
            response,
            json.dumps(event, separators=(",", ":"), ensure_ascii=False),
            year,
            pid,
            institution,
            message_id,
        ]
        for name, value in deltas.items():
            args += [name, value]
        with COMMIT_SECONDS.time():
            result = await self._batch.call(
                self._commit,
                [
                    keys.idem_key(partition, institution, message_id),
                    keys.state_key(pid),
                    keys.acc_key(pid, year),
                    keys.settlement_key(settlement_id),
                    keys.stream_key(partition),
                ],
                args,
            )
        return CommitResult(text(result[0]), bytes(result[1]) if len(result) > 1 else b"")

    async def reverse_settlement(
        self,
        *,
        stored: StoredSettlement,
        institution: str,
        message_id: str,
        payload_hash: str,
        response: bytes,
        event: dict[str, Any],
    ) -> CommitResult:
        partition = keys.partition_of_settlement(stored.settlement_id)
        with REVERSE_SECONDS.time():
            result = await self._reverse(
                keys=[
                    keys.settlement_key(stored.settlement_id),
                    keys.state_key(stored.person_id),
                    keys.acc_key(stored.person_id, stored.year),
                    keys.stream_key(partition),
                    keys.idem_key(partition, institution, message_id),
                ],
                args=[
                    payload_hash,
                    response,
                    json.dumps(event, separators=(",", ":"), ensure_ascii=False),
                    stored.settlement_id,
                ],
            )
        return CommitResult(text(result[0]), bytes(result[1]) if len(result) > 1 else b"")

    # ---------------------------------------------------------------- person import

    async def put_person(self, record: dict[str, Any], source: str = "import") -> None:
        """Write one person from the core system's export. The static record always replaces the old
        one; the personal account balance and accumulators are taken only for a person new to the
        gateway (after that, the gateway's own state is the truth)."""
        status = record.get("card_status", "normal")
        if status not in CARD_STATUSES:
            raise DataError(source, "card_status", f"{status!r} is not one of: {', '.join(CARD_STATUSES)}")
        person = records.person(record, source, "")
        state = records.person_state(record, source, "")
        pid = person.person_id
        static = {k: v for k, v in record.items() if k not in ("account_balance_fen", "accumulators")}
        old_raw = await self.client.get(keys.person_key(pid))
        stale_cards = []
        if old_raw is not None:
            old = json.loads(old_raw)
            stale_cards = [f"c:{old.get('card_no')}", f"i:{old.get('id_number')}"]
            if old.get("card_no") != person.card_no:
                await self.client.delete(keys.card_key(old["card_no"]))
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.person_key(pid), json.dumps(static, ensure_ascii=False, sort_keys=True))
        pipe.set(keys.card_key(person.card_no), pid)
        pipe.set(keys.id_number_key(person.id_number), pid)
        pipe.hsetnx(keys.state_key(pid), "ver", 0)
        pipe.hsetnx(keys.state_key(pid), "bal", state.account_balance_fen)
        if state.accumulators and state.year:
            for name, value in state.accumulators.items():
                pipe.hsetnx(keys.acc_key(pid, state.year), name, value)
        await pipe.execute()
        await self.client.publish(keys.PERSON_CHANNEL, json.dumps([*stale_cards, f"c:{person.card_no}"]))
