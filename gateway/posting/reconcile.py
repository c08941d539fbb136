"""Reconciliation with an institution (national 3201 totals, 3202 detail): compare what the institution
recorded with what the ledger holds, item by item, and say what to do about each difference."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from adapters.ledger.store import Ledger


class ItemStatus(StrEnum):
    MATCHED = "matched"
    MISSING_ON_GATEWAY = "missing_on_gateway"
    MISSING_AT_INSTITUTION = "missing_at_institution"
    AMOUNTS_DIFFER = "amounts_differ"


ACTIONS = {
    ItemStatus.MATCHED: "",
    ItemStatus.MISSING_ON_GATEWAY: (
        "the gateway never settled this message: the insurance did not pay; if it was settled after the"
        " posted-through time, reconcile again later; otherwise collect the amount from the patient or settle"
        " again with a new message id"
    ),
    ItemStatus.MISSING_AT_INSTITUTION: (
        "one-sided transaction: the insurance settled it but the institution has no record; fetch it with"
        " GetSettlement (5203) and record it, or reverse it (2601) if the patient did not complete the visit"
    ),
    ItemStatus.AMOUNTS_DIFFER: (
        "compare the split line by line with GetSettlement (5203) and correct the institution's record;"
        " the gateway's amounts are what the funds pay"
    ),
}


@dataclass(frozen=True, slots=True)
class Amounts:
    total_fen: int
    fund_total_fen: int
    account_fen: int


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    total_fen: int
    fund_total_fen: int
    account_fen: int
    cash_fen: int


@dataclass(frozen=True, slots=True)
class ItemResult:
    message_id: str
    status: ItemStatus
    gateway: Amounts | None
    institution: Amounts | None
    settlement_id: str

    @property
    def action(self) -> str:
        return ACTIONS[self.status]


def match(
    gateway: dict[str, tuple[str, Amounts]], institution: Iterable[tuple[str, Amounts]]
) -> list[ItemResult]:
    """gateway: message id -> (settlement id, amounts) of the settlements in force for the period."""
    results = []
    seen = set()
    for message_id, theirs in institution:
        seen.add(message_id)
        found = gateway.get(message_id)
        if found is None:
            results.append(ItemResult(message_id, ItemStatus.MISSING_ON_GATEWAY, None, theirs, ""))
            continue
        sid, ours = found
        status = ItemStatus.MATCHED if ours == theirs else ItemStatus.AMOUNTS_DIFFER
        results.append(ItemResult(message_id, status, ours, theirs, sid))
    for message_id, (sid, ours) in sorted(gateway.items()):
        if message_id not in seen:
            results.append(ItemResult(message_id, ItemStatus.MISSING_AT_INSTITUTION, ours, None, sid))
    return results


PERIOD = "institution = ? AND substr(at, 1, 10) >= ? AND substr(at, 1, 10) <= ?"
PERIOD_S = "s.institution = ? AND substr(s.at, 1, 10) >= ? AND substr(s.at, 1, 10) <= ?"


def ledger_totals(ledger: Ledger, institution: str, date_from: str, date_to: str) -> Totals:
    ((count, total, funds, account, cash),) = ledger.query(
        "SELECT COALESCE(SUM(CASE kind WHEN 'settle' THEN 1 WHEN 'reverse' THEN -1 ELSE 0 END), 0),"
        " COALESCE(SUM(total_fen), 0),"
        " COALESCE(SUM(fund_total_fen), 0), COALESCE(SUM(account_fen), 0), COALESCE(SUM(cash_fen), 0)"
        f" FROM journal WHERE {PERIOD}",
        [institution, date_from, date_to],
    )
    return Totals(int(count), int(total), int(funds), int(account), int(cash))


def ledger_items(
    ledger: Ledger, institution: str, date_from: str, date_to: str
) -> dict[str, tuple[str, Amounts]]:
    """Settlements of the period still in force (a reversed settlement is no longer owed), with what each
    pays now: its settle entry plus every refund and adjustment booked for it."""
    rows = ledger.query(
        "SELECT s.message_id, s.settlement_id, SUM(e.total_fen), SUM(e.fund_total_fen), SUM(e.account_fen)"
        " FROM journal s JOIN journal e ON e.settlement_id = s.settlement_id"
        f" WHERE s.kind = 'settle' AND {PERIOD_S} AND NOT EXISTS"
        " (SELECT 1 FROM journal r WHERE r.settlement_id = s.settlement_id AND r.kind = 'reverse')"
        " GROUP BY s.message_id, s.settlement_id",
        [institution, date_from, date_to],
    )
    return {m: (sid, Amounts(int(t), int(f), int(a))) for m, sid, t, f, a in rows}
