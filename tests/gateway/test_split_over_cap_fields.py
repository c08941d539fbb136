"""Construct 9 on the wire: a Split whose basic fund was cut by its annual maximum carries the uncapped
payment and the part above the maximum (proto fields 100, 101); one that was not cut carries zeros, so
the bytes of every old settlement stay the same."""

from __future__ import annotations

from gateway.codec import encode_split_only
from tests.engine.builders import state
from tests.engine.test_golden_breadth import settle


def test_the_cap_figures_travel_in_the_split_message() -> None:
    capped = encode_split_only(
        settle(5, 2, ("A1", 200_000, 1), st=state(fund_basic=300_000)), "999800", "999801"
    )
    assert (capped.basic_uncapped_fen, capped.basic_over_cap_fen) == (160_000, 60_000)
    free = encode_split_only(settle(5, 2, ("A1", 100_000, 1)), "999800", "999801")
    assert (free.basic_uncapped_fen, free.basic_over_cap_fen) == (0, 0)
    assert b"\xa0\x06" not in free.SerializeToString()  # field 100 absent: unchanged bytes


def test_a_per_disease_split_carries_its_rule_and_the_institution_share() -> None:
    from datetime import date

    from gateway.codec import mirror
    from gateway.engine import Split, split
    from gateway.engine.model import Bill, BillLine, VisitType
    from tests.engine.builders import ON, catalog, entry, institution, person
    from tests.engine.test_golden_breadth import BR, breadth

    b = Bill(VisitType.INPATIENT, (BillLine("A1", 800_000, 1, 1),), diagnoses=("K35.8",))
    who = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),))
    s = split(
        b, breadth(), catalog(BR, entry("A1", "A", "item")), institution(BR, "999801", 2), who, state(), ON
    )
    assert isinstance(s, Split)
    wire = encode_split_only(s, BR, "999801")
    assert (wire.per_disease, wire.institution_fen, wire.fund_total_fen, wire.cash_fen) == (
        "appendicitis", 50_000, 600_000, 150_000,
    )  # fmt: skip
    reversal = mirror(wire, 0)  # a reversal negates the institution's share with the rest
    assert (reversal.institution_fen, reversal.total_fen) == (-50_000, -800_000)


def test_a_bills_diagnosis_codes_are_recorded_and_read_back() -> None:
    # the recorded inputs re-split a settlement for corrections and the auditor: the audit rules and the
    # per-disease payment need its diagnosis codes; a bill without any records exactly what it did
    from adapters.settlement_records import bill_from, bill_json
    from gateway.engine.model import Bill, BillLine, VisitType

    with_dx = Bill(VisitType.INPATIENT, (BillLine("A1", 100, 1, 1),), diagnoses=("K35.8", "I10"))
    assert bill_from(bill_json(with_dx)) == with_dx
    plain = Bill(VisitType.INPATIENT, (BillLine("A1", 100, 1, 1),))
    assert "dx" not in bill_json(plain) and bill_from(bill_json(plain)) == plain
