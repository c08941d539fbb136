"""The settlement store in memory, for unit tests of the code above it (the service layer, the
stateful test of a person's year). Same port, same guarantees as the Redis store: a commit applies whole
or not at all, after comparing the person's version, checking that its message records do not exist and
that the institution-wide claims are free or its own. Production never uses it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.settlement_store import (
    Commit,
    CommitOutcome,
    MessageRecord,
    PersonSnapshot,
    StoredSettlement,
)
from gateway.engine.model import Person
from gateway.engine.plan_year import PlanKey, PlanYear, empty


@dataclasses.dataclass
class PersonEntry:
    person: Person
    digest: str
    card_status: str = "normal"
    version: int = 0
    balance_fen: int = 0
    opening_balance_fen: int = 0


class MemoryStore:
    def __init__(self) -> None:
        self.persons: dict[str, PersonEntry] = {}
        self.person_versions: dict[tuple[str, str], Person] = {}
        self.cards: dict[str, str] = {}
        self.years: dict[tuple[str, int], dict[PlanKey, PlanYear]] = {}
        self.messages: dict[tuple[str, str, str], MessageRecord] = {}
        self.claims: dict[tuple[str, str], str] = {}
        self.stored: dict[str, StoredSettlement] = {}
        self.answers: dict[tuple[str, str], bytes] = {}  # a refund's answer, by (settlement, f:<n>)
        self.events: list[Mapping[str, Any]] = []
        self.commits = 0
        self.yield_between_read_and_commit = False  # let concurrent tasks interleave, as over a network

    # ---------------------------------------------------------------- setting up

    def add_person(
        self,
        person: Person,
        balance_fen: int = 0,
        digest: str = "v1",
        opening: Mapping[PlanKey, Mapping[str, int]] | None = None,
    ) -> None:
        old = self.persons.get(person.person_id)
        if old is not None:
            self.person_versions[(person.person_id, old.digest)] = old.person
            old.person, old.digest = person, digest
        else:
            self.persons[person.person_id] = PersonEntry(
                person, digest, "normal", 0, balance_fen, balance_fen
            )
            for key, values in (opening or {}).items():
                self.years.setdefault((person.person_id, key.year), {})[key] = empty(key, values)
        self.cards[person.card_no] = person.person_id
        self.cards[person.id_number] = person.person_id

    # ---------------------------------------------------------------- reads

    async def person_id_for(self, card_no: str | None, id_number: str | None) -> str | None:
        return self.cards.get(card_no or id_number or "")

    async def read_person(
        self, person_id: str, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot | None:
        entry = self.persons.get(person_id)
        if entry is None:
            return None
        earlier = self.messages.get((person_id, *message)) if message is not None else None
        snapshot = PersonSnapshot(
            entry.person,
            entry.digest,
            entry.card_status,
            entry.version,
            entry.balance_fen,
            year,
            dict(self.years.get((person_id, year), {})),
            earlier,
            self.answer(earlier) if earlier is not None else b"",
        )
        if self.yield_between_read_and_commit:
            await asyncio.sleep(0)
        return snapshot

    def answer(self, m: MessageRecord) -> bytes:
        if m.response:
            return m.response
        s = self.stored.get(m.settlement_id)
        if s is None:
            return b""
        if m.response_field == "resp":
            return s.response
        if m.response_field == "rev":
            return s.reversal
        return self.answers[(s.settlement_id, m.response_field)]

    async def message(self, person_id: str, institution: str, message_id: str) -> MessageRecord | None:
        return self.messages.get((person_id, institution, message_id))

    async def settlement(self, settlement_id: str) -> StoredSettlement | None:
        return self.stored.get(settlement_id)

    async def settlements(self, settlement_ids: Sequence[str]) -> list[StoredSettlement | None]:
        return [self.stored.get(sid) for sid in settlement_ids]

    async def person_version(self, person_id: str, digest: str) -> Person | None:
        entry = self.persons.get(person_id)
        if entry is not None and entry.digest == digest:
            return entry.person
        return self.person_versions.get((person_id, digest))

    async def opening_balance(self, person_id: str) -> int | None:
        entry = self.persons.get(person_id)
        return entry.opening_balance_fen if entry is not None else None

    async def balance(self, person_id: str) -> int:
        return self.persons[person_id].balance_fen

    # ---------------------------------------------------------------- commits

    async def confirm_replicated(self, person_id: str, institution: str, message_id: str) -> None:
        return None  # one process's memory: nothing to replicate

    async def commit(self, c: Commit) -> CommitOutcome:
        entry = self.persons[c.person_id]
        if entry.version != c.expected_version:
            return CommitOutcome("CONFLICT")
        for m in c.messages:
            existing = self.messages.get((c.person_id, m.institution, m.message_id))
            if existing is not None:
                return CommitOutcome("EXISTS", existing)
        for m in c.messages:
            held = self.claims.get((m.institution, m.message_id))
            if held is not None and held != m.claim:
                return CommitOutcome("CLAIMED", detail=held)
        self.commits += 1
        entry.version += 1
        entry.balance_fen = c.balance_fen
        for _, new in c.years:
            self.years.setdefault((c.person_id, new.key.year), {})[new.key] = new
        for m in c.messages:
            self.claims[(m.institution, m.message_id)] = m.claim
            self.messages[(c.person_id, m.institution, m.message_id)] = m
        for n in c.new:
            self.stored[n.settlement_id] = StoredSettlement(
                n.settlement_id, n.person_id, n.plan, n.institution, n.message_id, "settled", n.response, b"",
                n.live, n.route,
            )  # fmt: skip
        for ch in c.changes:
            s = self.stored[ch.settlement_id]
            if ch.reversal is not None:
                s = dataclasses.replace(s, status="reversed", reversal=ch.reversal)
            if ch.live is not None:
                s = dataclasses.replace(s, live=ch.live)
            if ch.correction is not None:
                if ch.correction_no != len(s.corrections) + 1:
                    raise ValueError(f"correction {ch.correction_no} of {s.settlement_id} out of order")
                s = dataclasses.replace(s, corrections=(*s.corrections, ch.correction))
            if ch.answer is not None:
                self.answers[(ch.settlement_id, f"f:{ch.correction_no}")] = ch.answer
            self.stored[ch.settlement_id] = s
        self.events.extend(c.events)
        return CommitOutcome("OK")
