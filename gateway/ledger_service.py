"""Reconciliation and statements for terminals, from the ledger. Database calls run in a worker thread,
one at a time, so the event loop never blocks on them. The institution is the caller's (the edge has
checked the envelope against the client certificate): an institution sees only its own settlements.

Detail reconciliation is paged by message id, so neither a request nor a response grows with the
period: at most `reconcile_items_per_call_max` items in, at most `reconcile_page_items_max` results
and `reconcile_response_bytes_max` bytes out; the gateway's side of the page is cut in the worker
thread, so the event loop only ever handles one page."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis

from adapters import redis_keys as keys
from adapters.ledger.store import Ledger, LedgerUnavailable
from gateway.codec import Envelope
from gateway.edge.limits import EdgeLimits
from gateway.errors import InvalidInput, Unavailable
from gateway.posting import month_end, reconcile, statements
from gateway.posting.deadletters import HELD
from gateway.posting.reconcile import ItemResult, ItemStatus
from gateway.protos import pb

T = TypeVar("T")
STATUS_TO_PB = {
    reconcile.ItemStatus.MATCHED: pb.ITEM_STATUS_MATCHED,
    reconcile.ItemStatus.MISSING_ON_GATEWAY: pb.ITEM_STATUS_MISSING_ON_GATEWAY,
    reconcile.ItemStatus.MISSING_AT_INSTITUTION: pb.ITEM_STATUS_MISSING_AT_INSTITUTION,
    reconcile.ItemStatus.AMOUNTS_DIFFER: pb.ITEM_STATUS_AMOUNTS_DIFFER,
}
PERIOD_DAYS_MAX = 366
NOT_BOOKED_YET = (
    "the gateway settled this message (the insurance paid) but it is not in the ledger yet: posting is"
    " held at posted_through {posted_through} (a backlog, or a dead letter operations are handling); do not"
    " collect from the patient or settle again; reconcile again later"
)
TOKEN_PREFIX = "r1"
GatewayItems = dict[str, tuple[str, reconcile.Amounts]]


class LedgerService:
    def __init__(
        self,
        ledger: Ledger | None,
        client: aioredis.Redis,
        now: Callable[[], datetime],
        limits: EdgeLimits | None = None,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.now = now
        self.limits = limits or EdgeLimits()
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
        still in a partition stream (entries leave the stream once booked), or of the oldest dead letter
        not booked yet (unhandled, or replayed and not booked again), or now. A dead letter leaves its
        stream, so without the held set the watermark passed it, and Reconcile told the institution a
        settlement the gateway committed was never made."""
        pipe = self.client.pipeline(transaction=False)
        for p in range(keys.PARTITIONS):
            pipe.xrange(keys.stream_key(p), count=1)
        pipe.zrange(HELD, 0, 0, withscores=True)
        *firsts, held = await pipe.execute()
        times = [int(r[0][0].split(b"-")[0]) for r in firsts if r] + [int(score) for _, score in held]
        oldest_ms = min(times, default=None)
        now = self.now()
        if oldest_ms is None:
            return now.isoformat(timespec="milliseconds")
        return datetime.fromtimestamp(oldest_ms / 1000, now.tzinfo).isoformat(timespec="milliseconds")

    async def reconcile(self, env: Envelope, request: Any) -> Any:
        date_from, date_to = period(request.date_from, request.date_to)
        limits = self.limits
        if len(request.items) > limits.reconcile_items_per_call_max:
            raise InvalidInput(
                [("items", f"at most {limits.reconcile_items_per_call_max} items per request: send them in"
                  " sorted chunks with more_items_follow and page_token")]
            )  # fmt: skip
        after = decode_token(request.page_token, date_from, date_to)
        submitted = {}
        for i, item in enumerate(request.items):
            if after is not None and item.message_id <= after:
                raise InvalidInput(
                    [(f"items[{i}].message_id", "at or before page_token: already reconciled")]
                )
            submitted[item.message_id] = reconcile.Amounts(
                item.total_fen, item.fund_total_fen, item.account_fen
            )
        page_size = limits.reconcile_page_items_max
        if 0 < request.page_size < page_size:
            page_size = request.page_size
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
        if request.items or request.page_token or request.more_items_follow:
            upper = max(submitted) if request.more_items_follow and submitted else None
            gateway_items, upper = await self.run(
                gateway_page,
                env.institution_code,
                date_from,
                date_to,
                after,
                set(submitted),
                upper,
                page_size,
            )
            page = {k: v for k, v in submitted.items() if upper is None or k <= upper}
            results = sorted(reconcile.match(gateway_items, page.items()), key=lambda r: r.message_id)
            unbooked = await self.committed_not_booked(env.institution_code, results)
            budget = limits.reconcile_response_bytes_max - response.ByteSize() - 64
            for result in results:
                action = result.action
                if result.message_id in unbooked:
                    action = NOT_BOOKED_YET.format(posted_through=watermark)
                item = pb.ReconcileItemResult(
                    message_id=result.message_id, status=STATUS_TO_PB[result.status],
                    gateway=amounts_pb(result.message_id, result.gateway),
                    institution=amounts_pb(result.message_id, result.institution),
                    settlement_id=result.settlement_id, action=action,
                )  # fmt: skip
                budget -= item.ByteSize() + 4  # tag and length prefix
                if budget < 0:  # the page ends at the last item that fits
                    upper = response.items[-1].message_id
                    break
                response.items.append(item)
            if upper is not None:
                response.next_page_token = encode_token(upper, date_from, date_to)
            matched = matched and all(i.status == pb.ITEM_STATUS_MATCHED for i in response.items)
        response.matched = matched
        return response

    async def committed_not_booked(self, institution: str, results: list[ItemResult]) -> set[str]:
        """Message ids the ledger lacks that the gateway did settle (their claim says `settle`): in a
        stream, or a dead letter the watermark is held at. Never "collect from the patient" for those."""
        missing = [r.message_id for r in results if r.status is ItemStatus.MISSING_ON_GATEWAY]
        if not missing:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for message_id in missing:
            pipe.get(keys.claim_key(institution, message_id))
        claims = await pipe.execute()
        return {
            m
            for m, claim in zip(missing, claims, strict=True)
            if claim and claim.split(b"|")[1:2] == [b"settle"]
        }

    async def clearing(self, request: Any) -> Any:
        try:
            datetime.strptime(request.month, "%Y-%m")
        except ValueError:
            raise InvalidInput([("month", "YYYY-MM")]) from None
        if request.region and not (request.region.isdigit() and len(request.region) == 6):
            raise InvalidInput([("region", "a six-digit region code, or empty for every region")])
        if len(request.after_institution) > 40:
            raise InvalidInput([("after_institution", "at most 40 characters")])
        size = CLEARING_APPLICATIONS_PAGE_MAX
        if 0 < request.page_size < size:
            size = request.page_size
        watermark = await self.posted_through()
        debts, spend, page, more = await self.run(
            clearing_page, request.month, request.region, request.after_institution, size
        )
        response = pb.ClearingResponse(
            month=request.month, next_after_institution=more, posted_through=watermark
        )
        for d in debts:
            response.debts.add(debtor=d.debtor, creditor=d.creditor, amount_fen=d.amount_fen)
        for s in spend:
            response.fund_spend.add(
                region=s.region, district=s.district, fund_code=s.fund_code, amount_fen=s.amount_fen
            )
        for a in page:
            t = a.totals
            response.applications.add(
                application_id=a.application_id, institution_code=a.institution, state=a.state,
                totals=pb.Totals(
                    count=t.settlements, total_fen=t.total_fen, fund_total_fen=t.fund_fen,
                    account_fen=t.account_fen, cash_fen=t.cash_fen,
                ),
                payable_fen=t.payable_fen, closed_at=a.closed_at,
            )  # fmt: skip
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


CLEARING_APPLICATIONS_PAGE_MAX = 1000


def clearing_page(
    ledger: Ledger, month: str, region: str, after: str, page_size: int
) -> tuple[list[statements.Debt], list[statements.FundSpend], list[Any], str]:
    """One page of the month's clearing: the matrix and the spend whole (bounded by the districts),
    the applications a page at a time by institution code."""
    prefix = f"{region}/"
    debts = [
        d for d in statements.clearing_matrix(ledger, month)
        if not region or d.debtor.startswith(prefix) or d.creditor.startswith(prefix)
    ]  # fmt: skip
    spend = [s for s in statements.fund_spend(ledger, month) if not region or s.region == region]
    closes = [
        a for a in month_end.applications(ledger, month)
        if a.institution > after and (not region or any(p.startswith(prefix) for p in a.by_paying_party))
    ]  # fmt: skip
    page = closes[:page_size]
    more = page[-1].institution if len(closes) > page_size else ""
    return debts, spend, page, more


def amounts_pb(message_id: str, amounts: reconcile.Amounts | None) -> Any:
    if amounts is None:
        return None
    return pb.ReconcileItem(
        message_id=message_id, total_fen=amounts.total_fen, fund_total_fen=amounts.fund_total_fen,
        account_fen=amounts.account_fen,
    )  # fmt: skip


def gateway_page(
    ledger: Ledger,
    institution: str,
    date_from: str,
    date_to: str,
    after: str | None,
    submitted: set[str],
    upper: str | None,
    page_size: int,
) -> tuple[GatewayItems, str | None]:
    """In the worker thread: the gateway's items of one page and where the page ends. The page holds the
    message ids after `after`, at most `page_size` of them counting both sides (the gateway's and the
    institution's), and none beyond `upper` (the institution's last item when more follow)."""
    items = reconcile.ledger_items(ledger, institution, date_from, date_to)
    keys = sorted(
        k for k in items.keys() | submitted if (after is None or k > after) and (upper is None or k <= upper)
    )
    if len(keys) > page_size:
        upper = keys[page_size - 1]
        keys = keys[:page_size]
    wanted = set(keys)
    return {k: v for k, v in items.items() if k in wanted}, upper


def encode_token(after: str, date_from: str, date_to: str) -> str:
    raw = "|".join((TOKEN_PREFIX, date_from, date_to, after)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, date_from: str, date_to: str) -> str | None:
    """The last message id a previous page covered; the token is bound to its period."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, start, end, after = raw.split("|", 3)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput([("page_token", "not a token this gateway issued")]) from None
    if prefix != TOKEN_PREFIX or (start, end) != (date_from, date_to):
        raise InvalidInput([("page_token", "issued for another period")])
    return after


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
