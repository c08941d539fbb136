"""The settlement store's port: what the service layer reads and commits, in domain terms. Two
implementations: Redis (adapters/redis_store.py, production) and memory (adapters/memory_store.py, for
unit tests of the service layer). Both give the same guarantees: a commit applies whole or not at all,
after checking the person's version, that its message records do not exist yet, and that the
institution-wide message claims are free or its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.engine.corrections import Earlier, LiveSettlement
from gateway.engine.model import Person
from gateway.engine.plan_year import PlanKey, PlanYear, empty


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """The idempotency record of one (institution, message id), kept in the person's slot. The answer
    itself is stored once, in the settlement (`response_field` names where); only a reversal that found
    nothing to reverse has no settlement and keeps its answer here."""

    institution: str
    message_id: str
    kind: str  # settle | reverse | refund | void
    payload_hash: str
    person_id: str
    settlement_id: str = ""
    response_field: str = ""  # resp | rev | f:<n> (a refund's answer) in the settlement's record
    response: bytes = b""  # inline answer, only when there is no settlement

    @property
    def earlier(self) -> Earlier:
        return Earlier(self.kind, self.payload_hash, self.person_id, self.settlement_id)

    @property
    def claim(self) -> str:
        """The institution-wide claim on the message id: who used it, for what."""
        return f"{self.person_id}|{self.kind}|{self.payload_hash}"


@dataclass(frozen=True, slots=True)
class PersonSnapshot:
    person: Person
    digest: str  # of the record this snapshot parsed: settlements record which version they used
    card_status: str
    version: int  # the person's version; a commit compares it
    balance_fen: int
    year: int  # the plan-years read are this year's
    years: Mapping[PlanKey, PlanYear]
    earlier: MessageRecord | None = None  # what is recorded under the message id asked for
    earlier_response: bytes = b""  # and the answer stored for it

    def plan_year(self, key: PlanKey) -> PlanYear:
        return self.years.get(key) or empty(key)


@dataclass(frozen=True, slots=True)
class StoredSettlement:
    settlement_id: str
    person_id: str
    plan: PlanKey
    institution: str
    message_id: str
    status: str  # settled | reversed
    response: bytes  # the SettleResponse the terminal got, byte for byte
    reversal: bytes  # the ReverseResponse, when reversed
    live: LiveSettlement  # its contribution, inputs and what it pays now
    route: Mapping[str, Any]  # who owes whom: the posting event's routing fields
    corrections: tuple[bytes, ...] = ()  # Correction records (refunds, adjustments), in order
    archived: bool = False  # read from the ledger: it has left Redis (retention)


@dataclass(frozen=True, slots=True)
class NewSettlement:
    settlement_id: str
    person_id: str
    plan: PlanKey
    institution: str
    message_id: str
    response: bytes
    live: LiveSettlement
    route: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SettlementChange:
    """A correction of an existing settlement: it is reversed, or it pays something else now."""

    settlement_id: str
    reversal: bytes | None = None  # set when the settlement is reversed
    live: LiveSettlement | None = None  # its new contribution, inputs and money
    correction: bytes | None = None  # one more Correction record, appended
    correction_no: int = 0  # which one (1, 2, ...): the record's field is x:<n>
    answer: bytes | None = None  # a refund's answer to its terminal (field f:<n>), for its resends


@dataclass(frozen=True, slots=True)
class Commit:
    person_id: str
    expected_version: int
    balance_fen: int
    years: Sequence[tuple[PlanYear, PlanYear]]  # (as read, as it must become)
    messages: Sequence[MessageRecord]  # each created, claimed institution-wide; must not exist yet
    new: Sequence[NewSettlement] = ()
    changes: Sequence[SettlementChange] = ()
    events: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # for the posting worker


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    status: Literal["OK", "CONFLICT", "EXISTS", "CLAIMED", "REFUSED"]
    earlier: MessageRecord | None = None  # EXISTS: what is there now
    detail: str = ""  # CLAIMED: the claim's holder; REFUSED: why the store refused to write


class StoreRefused(Exception):
    """The store refused to write (keys of a wrong type, malformed operands): data in the store that is
    not ours, or a bug. Nothing was written."""


class SettlementStore(Protocol):
    async def person_id_for(self, card_no: str | None, id_number: str | None) -> str | None: ...

    async def read_person(
        self, person_id: str, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot | None: ...

    async def message(self, person_id: str, institution: str, message_id: str) -> MessageRecord | None: ...

    async def settlement(self, settlement_id: str) -> StoredSettlement | None: ...

    async def settlements(self, settlement_ids: Sequence[str]) -> list[StoredSettlement | None]: ...

    async def person_version(self, person_id: str, digest: str) -> Person | None: ...

    async def opening_balance(self, person_id: str) -> int | None: ...

    async def commit(self, commit: Commit) -> CommitOutcome: ...

    async def confirm_replicated(self, person_id: str, institution: str, message_id: str) -> None:
        """Before a resend is answered: the recorded answer is as durable as a new commit would be."""


class SettlementArchive(Protocol):
    """Settlements that have left the store, as the ledger keeps them (adapters/ledger/archive.py)."""

    async def settlement(self, settlement_id: str) -> StoredSettlement | None: ...

    async def settled_by(self, institution: str, message_id: str) -> str | None: ...
