"""Per-disease payment (单病种定额), tier 1 of examples/cases/policies/999800-breadth.toml: appendicitis
(K35) at a fixed 6,000.00 from the fund and a fixed 1,500.00 from the person; cataract (H25/H26) at
4,000.00 from the fund and the rest of the bill up to 1,000.00 from the person. The institution bears
the difference (hosp_part_amt), negative when the quota exceeds the bill."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from gateway.engine import Split, split
from gateway.engine.corrections import Money
from gateway.engine.model import Bill, BillLine, PersonState, VisitType

from .builders import ON, catalog, entry, institution, person, state
from .test_golden_breadth import BR, breadth

CAT = catalog(BR, entry("A1", "A", "item"), entry("C1", "C", "drug"))


def run(total: int, diagnoses: tuple[str, ...], st: PersonState | None = None, **bill: object) -> Split:
    lines = (BillLine("A1", total - 10_000, 1, 1), BillLine("C1", 10_000, 1, 2))  # a class C line too
    b = Bill(VisitType.INPATIENT, lines, diagnoses=diagnoses, **bill)  # type: ignore[arg-type]
    who = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),))
    out = split(b, breadth(), CAT, institution(BR, "999801", 2), who, st or state(), ON)
    assert isinstance(out, Split), out
    return out


@pytest.mark.parametrize(
    ("total", "diagnoses", "rule", "fund", "person_share", "institution"),
    [
        # 8,000.00 bill: fund 6,000.00, person 1,500.00, the hospital bears 500.00
        (800_000, ("K35.8",), "appendicitis", 600_000, 150_000, 50_000),
        # 5,000.00 bill: fund 6,000.00, person 1,500.00, the hospital keeps 2,500.00 (-250,000)
        (500_000, ("K35",), "appendicitis", 600_000, 150_000, -250_000),
        # cataract, 4,500.00: fund 4,000.00, person the rest 500.00 (under the 1,000.00 cap), hospital 0
        (450_000, ("H25.1", "I10"), "cataract", 400_000, 50_000, 0),
        # cataract, 7,000.00: fund 4,000.00, person capped at 1,000.00, hospital 2,000.00
        (700_000, ("H26.9",), "cataract", 400_000, 100_000, 200_000),
        # cataract, 3,000.00 (below the fund's quota): person 0, hospital keeps 1,000.00
        (300_000, ("H25",), "cataract", 400_000, 0, -100_000),
    ],
)
def test_fixed_fund_payment_per_stay_whatever_the_lines(
    total: int, diagnoses: tuple[str, ...], rule: str, fund: int, person_share: int, institution: int
) -> None:
    s = run(total, diagnoses)
    assert s.total_fen == total and s.per_disease == rule and "PER_DISEASE" in s.flags
    assert [(f.layer, f.fund_code, f.amount_fen) for f in s.funds] == [("per_disease", "310100", fund)]
    assert (s.person_share_fen, s.cash_fen, s.institution_fen) == (person_share, person_share, institution)
    assert s.fund_total_fen + s.account_fen + s.cash_fen + s.institution_fen == s.total_fen
    assert s.deltas == {"fund.per_disease": fund}  # no deductible, no stay count, no basic fund counter
    # the ledger books what the fund and the person pay the institution: the quota, not the bill
    money = Money.of(s)
    assert (money.total_fen, money.funds, money.cash_fen) == (
        fund + person_share,
        {"310100": fund},
        person_share,
    )


def test_the_personal_account_pays_the_fixed_share() -> None:
    s = run(800_000, ("K35.8",), st=state(100_000))
    assert (s.account_fen, s.cash_fen) == (100_000, 50_000)


@pytest.mark.parametrize(
    ("diagnoses", "extra"),
    [
        (("J18.9", "K35.8"), {}),  # appendicitis is not the principal (first) diagnosis
        ((), {}),  # no diagnosis codes
        (("K35.8",), {"stay_id": "S1", "interim": True}),  # an interim part: fee-for-service
    ],
)
def test_other_stays_are_settled_fee_for_service(
    diagnoses: tuple[str, ...], extra: dict[str, object]
) -> None:
    # fee-for-service under tier 1: deductible 1,000.00, class C 100.00 self-pay,
    # in scope 7,900.00: [1,000, 7,900) at 80% = 5,520.00
    s = run(800_000, diagnoses, **extra)
    assert (s.per_disease, s.institution_fen, s.deductible_fen) == ("", 0, 100_000)
    assert [f.amount_fen for f in s.funds] == [552_000]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "personal_fen = 150000",
            "personal_fen = 150000\npersonal_max_fen = 1",
            "give exactly one of personal_fen",
        ),
        (
            'diagnoses = ["K35"]',
            "diagnoses = []",
            "plans[0].inpatient.per_disease[0].diagnoses: list the diagnosis",
        ),
        (
            "fund_fen = 600000",
            "fund_fen = -1",
            "plans[0].inpatient.per_disease[0].fund_fen: -1 is out of range",
        ),
        (
            'name = "appendicitis"',
            'name = "appendicitis"\nfund_fee = 1',
            "per_disease[0]: unknown field(s): fund_fee",
        ),
    ],
)
def test_per_disease_errors_name_the_file_and_the_field(
    old: str, new: str, message: str, tmp_path: Path
) -> None:
    from .test_audit_rules_golden import edited_policy

    error = edited_policy(old, new, tmp_path)
    assert message in error, error


def test_a_per_disease_payment_may_not_share_a_capped_counter(tmp_path: Path) -> None:
    # counted in the basic fund's capped counter, the fixed payment could pass its annual maximum
    from .test_audit_rules_golden import edited_policy

    error = edited_policy("personal_fen = 150000", 'personal_fen = 150000\nfund_key = "fund.basic"', tmp_path)
    assert (
        "plans[0].inpatient.per_disease[0].fund_key: counter 'fund.basic' is already the fund counter"
        in error
    )
