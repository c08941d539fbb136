"""Reconciliation and statements for terminals, from the ledger. Database calls run in a worker thread,
one at a time, so the event loop never blocks on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters.ledger.store import Ledger, LedgerUnavailable
from gateway.codec import Envelope
from gateway.errors import InvalidInput, Unavailable
from gateway.posting import reconcile, statements
from gateway.protos import pb

T = TypeVar("T")
STATUS_TO_PB = {
    reconcile.ItemStatus.MATCHED: pb.ITEM_STATUS_MATCHED,
    reconcile.ItemStatus.MISSING_ON_GATEWAY: pb.ITEM_STATUS_MISSING_ON_GATEWAY,
    reconcile.ItemStatus.MISSING_AT_INSTITUTION: pb.ITEM_STATUS_MISSING_AT_INSTITUTION,
    reconcile.ItemStatus.AMOUNTS_DIFFER: pb.ITEM_STATUS_AMOUNTS_DIFFER,
}
ITEMS_MAX = 100_000  # items per detail reconciliation request
PERIOD_DAYS_MAX = 366


class LedgerService:
    def __init__(self, ledger: Ledger | None, client: aioredis.Redis, now: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self.client = client
        self.now = now
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.ledger is None:
            raise Unavailable("no ledger is configured for this gateway")
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, self.ledger, *args)
            except LedgerUnavailable as exc:
                raise Unavailable(str(exc)) from exc

    async def posted_through(self) -> str:
        """Every settlement committed before this instant is in the ledger: the time of the oldest entry
        still in a partition stream (entries leave the stream once booked), or now."""
        pipe = self.client.pipeline(transaction=False)
        for p in range(keys.PARTITIONS):
            pipe.xrange(keys.stream_key(p), count=1)
        oldest_ms = min((int(r[0][0].split(b"-")[0]) for r in await pipe.execute() if r), default=None)
        now = self.now()
        if oldest_ms is None:
            return now.isoformat(timespec="milliseconds")
        return datetime.fromtimestamp(oldest_ms / 1000, now.tzinfo).isoformat(timespec="milliseconds")

    async def reconcile(self, env: Envelope, request: Any) -> Any:
        date_from, date_to = period(request.date_from, request.date_to)
        if len(request.items) > ITEMS_MAX:
            raise InvalidInput([("items", f"at most {ITEMS_MAX} items per request")])
        watermark = await self.posted_through()
        ours = await self.run(reconcile.ledger_totals, env.institution_code, date_from, date_to)
        theirs = request.totals
        response = pb.ReconcileResponse(
            gateway_totals=pb.Totals(
                count=ours.count, total_fen=ours.total_fen, fund_total_fen=ours.fund_total_fen,
                account_fen=ours.account_fen, cash_fen=ours.cash_fen,
            ),
            institution_totals=theirs,
            posted_through=watermark,
        )  # fmt: skip
        matched = response.gateway_totals == theirs
        if request.items:
            gateway_items = await self.run(reconcile.ledger_items, env.institution_code, date_from, date_to)
            submitted = [
                (i.message_id, reconcile.Amounts(i.total_fen, i.fund_total_fen, i.account_fen))
                for i in request.items
            ]
            for result in reconcile.match(gateway_items, submitted):
                response.items.add(
                    message_id=result.message_id, status=STATUS_TO_PB[result.status],
                    gateway=amounts_pb(result.message_id, result.gateway),
                    institution=amounts_pb(result.message_id, result.institution),
                    settlement_id=result.settlement_id, action=result.action,
                )  # fmt: skip
            matched = matched and all(i.status == pb.ITEM_STATUS_MATCHED for i in response.items)
        response.matched = matched
        return response

    async def statement(self, env: Envelope, month: str) -> Any:
        try:
            datetime.strptime(month, "%Y-%m")
        except ValueError:
            raise InvalidInput([("month", "YYYY-MM")]) from None
        watermark = await self.posted_through()
        rows = await self.run(statements.institution_statements, month, env.institution_code)
        response = pb.StatementResponse(
            institution_code=env.institution_code, month=month, posted_through=watermark
        )
        for row in rows:
            response.totals.CopyFrom(
                pb.Totals(
                    count=row.settlements, total_fen=row.total_fen, fund_total_fen=row.fund_total_fen,
                    account_fen=row.account_fen, cash_fen=row.cash_fen,
                )
            )  # fmt: skip
            for code, amount in sorted(row.funds.items()):
                response.funds.add(fund_code=code, amount_fen=amount)
        return response


def amounts_pb(message_id: str, amounts: reconcile.Amounts | None) -> Any:
    if amounts is None:
        return None
    return pb.ReconcileItem(
        message_id=message_id, total_fen=amounts.total_fen, fund_total_fen=amounts.fund_total_fen,
        account_fen=amounts.account_fen,
    )  # fmt: skip


def period(date_from: str, date_to: str) -> tuple[str, str]:
    violations = []
    days = []
    for name, value in (("date_from", date_from), ("date_to", date_to)):
        try:
            days.append(date.fromisoformat(value))
        except ValueError:
            violations.append((name, "YYYY-MM-DD"))
    if not violations and not 0 <= (days[1] - days[0]).days <= PERIOD_DAYS_MAX:
        violations.append(("date_to", f"on or after date_from, at most {PERIOD_DAYS_MAX} days later"))
    if violations:
        raise InvalidInput(violations)
    return date_from, date_to
