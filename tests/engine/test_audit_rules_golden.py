"""Pre-settlement audit rules (3101/3102) of examples/cases/policies/999800-breadth.toml, one test per
kind: what each flags (rule id, severity, line, amount worked by hand), what it lets through, and that
a blocking severity rejects the bill with AUDIT_BLOCKED while the others settle with the flag."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway.engine import Rejected, Rejection, Split, split
from gateway.engine.audit_rules import AuditKind, Severity
from gateway.engine.model import Bill, BillLine, VisitType

from .builders import ON, catalog, entry, institution, person, state
from .test_golden_breadth import BR, breadth

CATALOG = catalog(
    BR,
    entry("A1", "A", "item"),
    entry("GYN", "A", "item"),
    entry("PED", "A", "drug"),
    entry("INJ", "A", "item"),
    entry("STAT", "A", "drug"),
    entry("ICU", "A", "facility"),
)


def run(
    visit: str,
    *lines: tuple[str, int, int] | tuple[str, int, int, date],
    sex: str = "M",
    birth: date = date(1980, 1, 1),
    diagnoses: tuple[str, ...] = (),
) -> Split | Rejected:
    bill_lines = tuple(
        BillLine(ln[0], ln[1], ln[2], i + 1, ln[3] if len(ln) > 3 else None)  # type: ignore[misc]
        for i, ln in enumerate(lines)
    )
    b = Bill(VisitType(visit), bill_lines, diagnoses=diagnoses)
    who = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),), sex=sex, birth=birth)
    kind = "pharmacy" if visit == "pharmacy" else "hospital"
    return split(b, breadth(), CATALOG, institution(BR, "999801", 2, kind), who, state(), ON)


def flags(outcome: Split | Rejected) -> list[tuple[str, int, int]]:
    return [(f.rule_id, f.line_no, f.amount_fen) for f in outcome.audit_flags]


def test_sex_restricted_item_blocks_at_error_severity() -> None:
    # GYN for a man: SEX-01 is an error, and the policy blocks errors
    out = run("inpatient", ("A1", 10_000, 1), ("GYN", 8_000, 1), sex="M")
    assert isinstance(out, Rejected)
    assert out.code is Rejection.AUDIT_BLOCKED and out.code == 420
    assert out.line_no == 2
    assert "SEX-01" in out.reason and "line 2" in out.reason
    assert flags(out) == [("SEX-01", 2, 8_000)]
    ok = run("inpatient", ("A1", 10_000, 1), ("GYN", 8_000, 1), sex="F")
    assert isinstance(ok, Split) and ok.audit_flags == ()


def test_age_restricted_item_flags_and_settles() -> None:
    # PED (paediatric) for a 46-year-old: AGE-01 warning, amount = the line 30.00 x 2 = 60.00
    out = run("inpatient", ("PED", 3_000, 2))
    assert isinstance(out, Split)
    assert flags(out) == [("AGE-01", 1, 6_000)]
    assert out.audit_flags[0].severity is Severity.WARNING and out.audit_flags[0].kind is AuditKind.AGE
    assert (out.total_fen, out.cash_fen) == (
        6_000,
        6_000,
    )  # settled (below the deductible), no money moved by the flag
    child = run("inpatient", ("PED", 3_000, 2), birth=date(2014, 1, 1))  # 12 years old
    assert isinstance(child, Split) and child.audit_flags == ()


def test_duplicate_charge_of_one_item_in_a_visit() -> None:
    # A1 at 50.00 on lines 1 and 3, same day: line 3 is the duplicate (50.00); A1 at another price on
    # line 2 is not, nor is A1 again on another service day (line 4)
    out = run(
        "inpatient",
        ("A1", 5_000, 1),
        ("A1", 7_000, 1),
        ("A1", 5_000, 1),
        ("A1", 5_000, 1, date(2026, 6, 14)),
    )
    assert isinstance(out, Split)
    assert flags(out) == [("DUP-01", 3, 5_000)]
    # not on a pharmacy bill (the rule lists outpatient and inpatient)
    pharmacy = run("pharmacy", ("A1", 5_000, 1), ("A1", 5_000, 1))
    assert isinstance(pharmacy, Split) and pharmacy.audit_flags == ()


def test_quantity_over_the_per_day_maximum() -> None:
    # INJ at most 2 a day. 13 June: 1 + 2 = 3 units, one over on line 2 (12.00). 14 June: 2, fine.
    # 15 June: 4 on one line, two over (24.00). Lines 1 and 2 (same item, price and day) are also a
    # duplicate charge: DUP-01 flags line 2 for its whole amount (24.00).
    out = run(
        "inpatient",
        ("INJ", 1_200, 1, date(2026, 6, 13)),
        ("INJ", 1_200, 2, date(2026, 6, 13)),
        ("INJ", 1_200, 2, date(2026, 6, 14)),
        ("INJ", 1_200, 4, date(2026, 6, 15)),
    )
    assert isinstance(out, Split)
    assert flags(out) == [("QTY-01", 2, 1_200), ("DUP-01", 2, 2_400), ("QTY-01", 4, 2_400)]


@pytest.mark.parametrize(
    ("diagnoses", "flagged"),
    [((), True), (("J06.9",), True), (("I10",), False), (("J06.9", "E78.5"), False), (("I1",), True)],
)
def test_drug_limited_to_listed_diagnoses(diagnoses: tuple[str, ...], flagged: bool) -> None:
    # STAT is paid only for I10 / E78 (prefixes: E78.5 matches E78; I1 does not match I10)
    out = run("outpatient", ("STAT", 4_500, 1), diagnoses=diagnoses)
    assert isinstance(out, Split)
    assert flags(out) == ([("DX-01", 1, 4_500)] if flagged else [])


def test_item_not_allowed_for_the_visit_type_blocks() -> None:
    out = run("outpatient", ("ICU", 100_000, 1))
    assert isinstance(out, Rejected) and out.code is Rejection.AUDIT_BLOCKED
    assert flags(out) == [("VT-01", 1, 100_000)]
    assert isinstance(run("inpatient", ("ICU", 100_000, 1)), Split)


def test_pharmacy_days_of_supply() -> None:
    # STAT 1 a day, at most 30 days: 45 tablets = 45 days, 15 over at 1.50 = 22.50 (info: flags only).
    # The diagnosis rule flags the same line too (no diagnosis codes on the bill).
    out = run("pharmacy", ("STAT", 150, 45))
    assert isinstance(out, Split)
    assert flags(out) == [("DX-01", 1, 6_750), ("DS-01", 1, 2_250)]
    assert out.audit_flags[1].severity is Severity.INFO
    # 30 days is allowed; not checked outside the pharmacy
    assert flags(run("pharmacy", ("STAT", 150, 30), diagnoses=("I10",))) == []
    assert flags(run("outpatient", ("STAT", 150, 45), diagnoses=("I10",))) == []


def test_a_policy_without_audit_rules_flags_nothing() -> None:
    from .builders import CQ, policy

    cat = catalog(CQ, entry("A1", "A", "item"))
    b = Bill(VisitType.INPATIENT, (BillLine("A1", 5_000, 1, 1), BillLine("A1", 5_000, 1, 2)))
    out = split(b, policy(CQ), cat, institution(CQ, "500103", 2), person(CQ, "500103"), state(), ON)
    assert isinstance(out, Split) and out.audit_flags == ()


def edited_policy(old: str, new: str, tmp_path: Path) -> str:
    from rules_cache.policy_files import load_policy_file
    from rules_cache.reader import DataError

    from .test_golden_breadth import POLICY_FILE

    text = POLICY_FILE.read_text(encoding="utf-8")
    assert old in text, old
    bad = tmp_path / "999800-breadth.toml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_policy_file(bad)
    return str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'block = ["error"]',
            'block = ["fatal"]',
            "audit.block[0]: 'fatal' is not one of: info, warning, error",
        ),
        ('id = "AGE-01"', 'id = "SEX-01"', "audit.rules[1].id: rule id 'SEX-01' is used twice"),
        ('kind = "sex"', 'kind = "gender"', "audit.rules[0].kind: 'gender' is not one of: sex, age"),
        ('codes = ["GYN"]', "codes = []", "audit.rules[0].codes: a sex rule needs the catalog codes"),
        ("per_day_max = 2", "per_day_max = 0", "audit.rules[3].per_day_max: 0 is out of range"),
        (
            'diagnoses = ["I10", "E78"]',
            "diagnoses = []",
            "audit.rules[4].diagnoses: list the diagnosis codes",
        ),
        ("max_age = 14", "max_ag = 14", "audit.rules[1].min_age: an age rule needs min_age, max_age or both"),
        ('sex = "F"', 'sex = "F"\nper_day_max = 3', "audit.rules[0]: unknown field(s): per_day_max"),
    ],
)
def test_audit_rule_errors_name_the_file_and_the_field(
    old: str, new: str, message: str, tmp_path: Path
) -> None:
    error = edited_policy(old, new, tmp_path)
    assert error.startswith("999800-breadth.toml: ") and message in error, error
