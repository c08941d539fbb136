"""Money routing by the seeds' rules, and the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from adapters.ledger.store import Entry, Ledger, UnbalancedEntry
from gateway.engine.routing import PostingError, balances, mirror, route
from gateway.posting import statements


def event(**changes: Any) -> dict[str, Any]:
    base = {
        "type": "settle", "sid": "S107-260615-aa", "msgid": "M1", "at": "2026-06-15T10:30:00+08:00",
        "inst": "H50010300001", "inst_region": "500000", "inst_district": "500103", "city_managed": False,
        "insured_region": "500000", "insured_district": "500103", "scheme": "resident", "visit": "inpatient",
        "person": "P1", "total": 100_000, "funds": {"390100": 60_000, "390200": 10_000}, "account": 0,
        "cash": 30_000, "policy": "cq-2026.1", "catalog": "c1",
    }  # fmt: skip
    base.update(changes)
    return base


def test_care_in_the_insured_district_is_paid_by_that_district() -> None:
    journal, transfers = route(event())
    assert journal.paying_party == "500000/500103"
    assert [(t.debit, t.credit, t.amount_fen) for t in transfers] == [
        ("fund:500000/500103:resident:390100", "payable:500000/500103:H50010300001", 60_000),
        ("fund:500000/500103:resident:390200", "payable:500000/500103:H50010300001", 10_000),
    ]


def test_care_elsewhere_in_the_city_is_advanced_by_the_treatment_district() -> None:
    # Chongqing: insured in Wanzhou, treated in Yuzhong: Yuzhong's agency pays the hospital and Wanzhou
    # owes Yuzhong, cleared monthly through the city platform.
    journal, transfers = route(event(insured_district="500101", funds={"390100": 60_000}, cash=40_000))
    assert journal.paying_party == "500000/500103"
    assert [(t.debit, t.credit) for t in transfers] == [
        ("fund:500000/500101:resident:390100", "due:500000/500101>500000/500103"),
        ("receivable:500000/500103<500000/500101", "payable:500000/500103:H50010300001"),
    ]


def test_city_managed_hospital_is_paid_by_the_city_agency() -> None:
    # Yancheng: the city agency settles with the city's level-3 hospitals
    e = event(inst="H32090200001", inst_region="320900", inst_district="320902", insured_region="320900",
              insured_district="320921", city_managed=True, scheme="employee", funds={"310100": 70_000},
              cash=30_000)  # fmt: skip
    journal, transfers = route(e)
    assert journal.paying_party == "320900/city"
    assert transfers[0].credit == "due:320900/320921>320900/city"


def test_cross_region_care_creates_a_debt_between_regions() -> None:
    e = event(inst="H37010200001", inst_region="370100", inst_district="370102", funds={"310100": 50_000},
              account=20_000, cash=30_000, scheme="employee")  # fmt: skip
    journal, transfers = route(e)
    assert journal.paying_party == "370100/370102"
    assert {t.credit for t in transfers if t.credit.startswith("due:")} == {"due:500000/500103>370100/370102"}
    assert transfers[2].debit == "personal:500000/500103:P1"


def test_every_entry_balances_and_a_reversal_is_its_mirror() -> None:
    journal, transfers = route(event(insured_district="500101"))
    assert sum(balances(transfers).values()) == 0
    rj, rt = mirror(journal, transfers, {"msgid": "M2", "at": "2026-07-01T09:00:00+08:00"})
    assert rj.total_fen == -100_000 and rj.funds == {"390100": -60_000, "390200": -10_000}
    assert all(v == 0 for v in balances(transfers + rt).values())


def test_malformed_or_inconsistent_events_are_refused() -> None:
    with pytest.raises(PostingError):
        route({"type": "settle", "sid": "x"})
    with pytest.raises(PostingError, match="does not add up"):
        route(event(cash=1))


def test_booking_is_idempotent_and_reversal_compensates(ledger: Ledger) -> None:
    journal, transfers = route(event())
    entry = Entry(journal, transfers, "1-0")
    assert len(ledger.book([entry])) == 1
    assert ledger.book([entry]) == [], "a second delivery books nothing"
    original = ledger.original(journal.settlement_id)
    assert original is not None and original[0] == journal and original[1] == transfers
    rj, rt = mirror(journal, transfers, {"msgid": "M2", "at": "2026-07-01T09:00:00+08:00"})
    assert len(ledger.book([Entry(rj, rt, "2-0")])) == 1
    june = statements.institution_statements(ledger, "2026-06")
    july = statements.institution_statements(ledger, "2026-07")
    assert [(s.settlements, s.total_fen, s.funds) for s in june] == [
        (1, 100_000, {"390100": 60_000, "390200": 10_000})
    ]
    assert [(s.settlements, s.total_fen, s.cash_fen) for s in july] == [(-1, -100_000, -30_000)]
    ((rows,),) = ledger.query("SELECT COUNT(*) FROM transfers")
    assert int(rows) == 4


def test_the_database_refuses_what_does_not_balance(ledger: Ledger) -> None:
    journal, transfers = route(event())
    ledger.book([Entry(journal, transfers, "1-0")])
    transfer = "INSERT INTO transfers (entry_id, seq, debit, credit, amount_fen, at_month, inst_region)"
    for bad, why in (  # not positive; between one account and itself; no journal row
        (f"{transfer} VALUES ('S107-260615-aa', 9, 'a', 'b', -5, '2026-06', '500000')", "amount_fen"),
        (
            f"{transfer} VALUES ('S107-260615-aa', 9, 'a', 'a', 5, '2026-06', '500000')",
            "debit <> credit|transfers2_check",
        ),
        (
            "INSERT INTO journal_funds (entry_id, fund_code, amount_fen, at_month, inst_region)"
            " VALUES ('S-none', '310100', 5, '2026-06', '500000')",
            "foreign key",
        ),
    ):
        with pytest.raises(Exception, match=f"(?i){why}"):  # IntegrityError of either driver
            ledger.query(bad)
    # the same row, well formed, is taken: the refusals above are the constraints', not the SQL's
    with ledger.transaction() as cur:
        cur.execute(f"{transfer} VALUES ('S107-260615-aa', 9, 'a', 'b', 5, '2026-06', '500000')")
    # funds 69,999 + cash 30,001 still add up to the total, but the transfers move 70,000 out of the funds
    unbalanced = Entry(
        dataclasses.replace(journal, settlement_id="S2", fund_total_fen=69_999, cash_fen=30_001),
        transfers,
        "3-0",
    )
    with pytest.raises(UnbalancedEntry):
        ledger.book([unbalanced])


def test_clearing_matrix_nets_debts_and_fund_spend_by_district(ledger: Ledger) -> None:
    # Wanzhou residents treated in Yuzhong (600) and Yuzhong residents treated in Wanzhou (250)
    a = route(event(sid="S1", insured_district="500101", funds={"390100": 600}, cash=99_400))
    b = route(
        event(sid="S2", inst="H50010100001", inst_district="500101", funds={"390100": 250}, cash=99_750)
    )
    ledger.book([Entry(*a, "1-0"), Entry(*b, "2-0")])
    debts = statements.clearing_matrix(ledger, "2026-06")
    assert [(d.debtor, d.creditor, d.amount_fen) for d in debts] == [("500000/500101", "500000/500103", 350)]
    spend = {(s.district, s.fund_code): s.amount_fen for s in statements.fund_spend(ledger, "2026-06")}
    assert spend == {("500101", "390100"): 600, ("500103", "390100"): 250}
