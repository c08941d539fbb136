"""Statements from the ledger: per institution and month (what a monthly clearing application needs),
the monthly inter-party clearing matrix (who owes whom, netted), and fund spend per district and month.
Reversals, refunds and adjustments count in the month they happened, as signed amounts; the count is
settlements minus reversals."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.ledger.store import Ledger


@dataclass(frozen=True, slots=True)
class InstitutionMonth:
    institution: str
    month: str
    settlements: int  # settled minus reversed
    total_fen: int
    fund_total_fen: int
    account_fen: int
    cash_fen: int
    funds: dict[str, int] = field(default_factory=dict)  # fund code -> fen


@dataclass(frozen=True, slots=True)
class Debt:
    month: str
    debtor: str  # party: <region>/<district> or <region>/city
    creditor: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class FundSpend:
    month: str
    region: str
    district: str
    fund_code: str
    amount_fen: int


def institution_statements(
    ledger: Ledger, month: str, institution: str | None = None
) -> list[InstitutionMonth]:
    where, params = "month = ?", [month]
    if institution:
        where, params = where + " AND institution = ?", [month, institution]
    rows = ledger.query(
        "SELECT institution, SUM(CASE kind WHEN 'settle' THEN 1 WHEN 'reverse' THEN -1 ELSE 0 END),"
        " SUM(total_fen),"
        " SUM(fund_total_fen), SUM(account_fen), SUM(cash_fen)"
        f" FROM journal WHERE {where} GROUP BY institution ORDER BY institution",
        params,
    )
    funds: dict[str, dict[str, int]] = {}
    for inst, code, amount in ledger.query(
        "SELECT j.institution, f.fund_code, SUM(f.amount_fen) FROM journal_funds f"
        " JOIN journal j ON j.entry_id = f.entry_id"
        f" WHERE j.{where.replace(' AND institution', ' AND j.institution')}"
        " GROUP BY j.institution, f.fund_code",
        params,
    ):
        funds.setdefault(inst, {})[code] = int(amount)
    return [
        InstitutionMonth(inst, month, int(n), int(t), int(f), int(a), int(c), funds.get(inst, {}))
        for inst, n, t, f, a, c in rows
    ]


def clearing_matrix(ledger: Ledger, month: str) -> list[Debt]:
    """Netted debts between parties for the month: if A owes B 100 and B owes A 30, A owes B 70."""
    gross: dict[tuple[str, str], int] = {}
    for account, signed in ledger.query(
        "SELECT t.credit, SUM(t.amount_fen) FROM transfers t JOIN journal j"
        " ON j.entry_id = t.entry_id"
        " WHERE j.month = ? AND t.credit LIKE 'due:%' GROUP BY t.credit"
        " UNION ALL "
        "SELECT t.debit, -SUM(t.amount_fen) FROM transfers t JOIN journal j"
        " ON j.entry_id = t.entry_id"
        " WHERE j.month = ? AND t.debit LIKE 'due:%' GROUP BY t.debit",
        [month, month],
    ):
        debtor, _, creditor = account.removeprefix("due:").partition(">")
        gross[(debtor, creditor)] = gross.get((debtor, creditor), 0) + int(signed)
    out = []
    for (debtor, creditor), amount in sorted(gross.items()):
        net = amount - gross.get((creditor, debtor), 0)
        if net > 0:
            out.append(Debt(month, debtor, creditor, net))
    return out


def fund_spend(ledger: Ledger, month: str) -> list[FundSpend]:
    return [
        FundSpend(month, region, district, code, int(amount))
        for region, district, code, amount in ledger.query(
            "SELECT j.insured_region, j.insured_district, f.fund_code, SUM(f.amount_fen) FROM journal_funds f"
            " JOIN journal j ON j.entry_id = f.entry_id WHERE j.month = ?"
            " GROUP BY j.insured_region, j.insured_district, f.fund_code"
            " ORDER BY j.insured_region, j.insured_district, f.fund_code",
            [month],
        )
    ]


def institution_fund_spend(ledger: Ledger, year: int) -> list[tuple[str, int]]:
    """What the funds have paid each institution in `year` (months booked, reversals netted): the spend
    an annual global budget is measured against."""
    return [
        (str(institution), int(amount))
        for institution, amount in ledger.query(
            "SELECT j.institution, SUM(f.amount_fen) FROM journal_funds f"
            " JOIN journal j ON j.entry_id = f.entry_id WHERE j.month >= ? AND j.month <= ?"
            " GROUP BY j.institution ORDER BY j.institution",
            [f"{year}-01", f"{year}-12"],
        )
    ]
