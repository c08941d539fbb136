"""Per-disease payment in the ledger (SQLite and PostgreSQL): a settlement split under a fixed fund
payment is booked as what the fund owes the institution under it (the quota), with the person's share;
the bill's cost above the quota is the institution's, so the journal balances at fund + person."""

from __future__ import annotations

from datetime import date

from adapters.ledger.store import Entry, Ledger
from gateway.engine import Split, split
from gateway.engine.corrections import Money
from gateway.engine.model import Bill, BillLine, VisitType
from gateway.engine.routing import mirror, route
from gateway.posting import statements
from tests.engine.builders import ON, catalog, entry, institution, person, state
from tests.engine.test_golden_breadth import BR, breadth


def per_disease_event(total_fen: int) -> tuple[dict[str, object], Split]:
    cat = catalog(BR, entry("A1", "A", "item"))
    b = Bill(VisitType.INPATIENT, (BillLine("A1", total_fen, 1, 1),), diagnoses=("K35.8",))
    who = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),))
    inst = institution(BR, "999801", 2)
    s = split(b, breadth(), cat, inst, who, state(), ON)
    assert isinstance(s, Split) and s.per_disease == "appendicitis"
    money = Money.of(s)
    event = {
        "type": "settle", "sid": "S001-260615-pd", "msgid": "M1", "at": "2026-06-15T10:30:00+08:00",
        "inst": inst.code, "inst_region": BR, "inst_district": "999801", "city_managed": False,
        "insured_region": BR, "insured_district": "999801", "scheme": "employee", "visit": "inpatient",
        "person": "P1", "total": money.total_fen, "funds": dict(money.funds), "account": money.account_fen,
        "cash": money.cash_fen, "policy": s.policy_version, "catalog": s.catalog_version,
    }  # fmt: skip
    return event, s


def test_the_ledger_books_the_quota_the_fund_owes_the_institution(ledger: Ledger) -> None:
    event, s = per_disease_event(800_000)  # an 8,000.00 bill; quota 6,000.00 + 1,500.00
    journal, transfers = route(event)
    assert ledger.book([Entry(journal, transfers, "1-0")])
    (june,) = statements.institution_statements(ledger, "2026-06")
    assert (june.settlements, june.total_fen, june.funds, june.cash_fen) == (
        1, 750_000, {"310100": 600_000}, 150_000,
    )  # fmt: skip
    assert s.institution_fen == 50_000  # the 500.00 above the quota is the hospital's, not booked
    # a reversal is the mirror: nothing owed any more
    rj, rt = mirror(journal, transfers, {"msgid": "M2", "at": "2026-06-20T09:00:00+08:00"})
    assert ledger.book([Entry(rj, rt, "2-0")])
    (june,) = statements.institution_statements(ledger, "2026-06")
    assert (june.total_fen, june.funds.get("310100", 0)) == (0, 0)


def test_a_surplus_kept_by_the_institution_still_books_the_full_quota(ledger: Ledger) -> None:
    event, s = per_disease_event(500_000)  # a 5,000.00 bill under a 7,500.00 quota
    journal, transfers = route(event)
    assert ledger.book([Entry(journal, transfers, "1-0")])
    (june,) = statements.institution_statements(ledger, "2026-06")
    assert (june.total_fen, june.funds) == (750_000, {"310100": 600_000})
    assert s.institution_fen == -250_000
