"""The ledger as the archive of settlements that have left Redis (retention: gateway/posting/retention.py).
The commit records the ledger keeps (adapters/settlement_records.LedgerRecord) replay into the same
StoredSettlement the Redis store gives, so GetSettlement, Reverse and 5203 answer from here with the very
bytes the terminal got. A connection of its own, used one call at a time in a worker thread: the event
loop never waits on the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from adapters.ledger.store import Ledger, LedgerUnavailable
from adapters.settlement_store import StoredSettlement

T = TypeVar("T")
RECORDS_SINCE = 3  # the ledger migration that added the records table


class ArchiveUnavailable(Exception):
    """The ledger cannot be reached: whether the settlement exists is unknown, not "no"."""


class LedgerArchive:
    def __init__(self, dsn: str) -> None:
        self.ledger = Ledger(dsn)
        self._lock = asyncio.Lock()
        self._ready = False  # the ledger has the records table (the worker migrates it at its start)

    async def run(self, fn: Callable[[], T], empty: T) -> T:
        async with self._lock:
            try:
                if not self._ready:
                    self._ready = await asyncio.to_thread(self.ledger.schema_version) >= RECORDS_SINCE
                    if not self._ready:
                        return empty  # a ledger no worker has started on yet holds nothing
                return await asyncio.to_thread(fn)
            except LedgerUnavailable as exc:
                raise ArchiveUnavailable(str(exc)) from exc

    def close(self) -> None:
        self.ledger.close()

    async def settlement(self, settlement_id: str) -> StoredSettlement | None:
        """The settlement as its commits left it in Redis, or None when the ledger has no record of it
        (never booked, or booked from an entry of the first format, which carried none)."""
        none: dict[str, StoredSettlement] = {}
        found = await self.run(lambda: self.ledger.archived_settlements([settlement_id]), none)
        return found.get(settlement_id)

    async def settled_by(self, institution: str, message_id: str) -> str | None:
        """The settlement an institution's message id settled, if the ledger has booked one."""
        none: list[tuple[str, str]] = []
        entries = await self.run(lambda: self.ledger.by_message(institution, message_id), none)
        return next((sid for sid, kind in entries if kind == "settle"), None)
