"""Claims after the fact (手工报销) split by the engine, worked by hand: the receipts' totals as lines,
the case's rule from the policy's [claims] (a penalty, a fixed ratio, not claimable), the cascade on the
person's plan-year; and a recorded claim splits again exactly (gateway/resplit.py, for corrections and
the auditor)."""

from __future__ import annotations

from datetime import date

from gateway.engine import Rejected, Rejection, Split
from gateway.engine.claims import claim_bill, claim_institution, split_claim
from gateway.engine.corrections import Money, SettlementInputs
from gateway.engine.model import NO_STAY, VisitType
from gateway.engine.policy import ClaimCase
from gateway.resplit import RecordedRules

from .builders import CQ, ON, person, policy, state
from .test_golden_breadth import BR, breadth


def test_out_of_city_claim_in_chongqing_pays_with_the_penalty() -> None:
    # receipts 20,000.00: full self-pay 1,000.00, over-limit 500.00, first self-pay 1,500.00
    # in scope 17,000.00; level 3 deductible 800.00 x 1.05 = 840.00; 85% - 5 = 80% of 16,160.00 = 12,928.00
    b = claim_bill(VisitType.INPATIENT, 1_700_000, 100_000, 50_000, 150_000)
    s = split_claim(b, ClaimCase.OUT_OF_CITY, 3, policy(CQ), person(CQ, "500103"), state(425_500), ON)
    assert isinstance(s, Split)
    assert [
        (ln.code, ln.full_selfpay_fen, ln.over_limit_fen, ln.first_selfpay_fen, ln.in_scope_fen)
        for ln in s.lines
    ] == [
        ("RECEIPT_IN_SCOPE", 0, 0, 0, 1_700_000),
        ("RECEIPT_FULL_SELFPAY", 100_000, 0, 0, 0),
        ("RECEIPT_OVER_LIMIT", 0, 50_000, 0, 0),
        ("RECEIPT_FIRST_SELFPAY", 0, 0, 150_000, 0),
    ]
    assert (s.total_fen, s.deductible_fen, s.fund_total_fen) == (2_000_000, 84_000, 1_292_800)
    assert (s.account_fen, s.cash_fen) == (0, 707_200)  # paid in full already: the account is not used
    assert s.deltas == {
        "ded.inpatient": 84_000,
        "stays.inpatient": 1,
        "cost.basic": 1_616_000,
        "fund.basic": 1_292_800,
    }
    assert s.flags == ("CLAIM_OUT_OF_CITY", "PENALTY_CLAIM")


def test_emergency_claim_pays_by_the_plans_rules() -> None:
    # outpatient emergency, level 2, 600.00 in scope: deductible 200.00 (met 0 so far), 50% of 400.00
    b = claim_bill(VisitType.OUTPATIENT, 60_000)
    s = split_claim(b, ClaimCase.EMERGENCY, 2, policy(CQ), person(CQ, "500103"), state(), ON)
    assert isinstance(s, Split)
    assert (s.deductible_fen, s.fund_total_fen, s.cash_fen, s.flags) == (
        20_000,
        20_000,
        40_000,
        ("CLAIM_EMERGENCY",),
    )


def test_a_fixed_ratio_for_the_case_replaces_the_plans() -> None:
    # breadth tier 1: non-designated care at a fixed 50% after the 1,000.00 deductible: 4,000.00 x 50%
    who = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),))
    b = claim_bill(VisitType.INPATIENT, 500_000)
    s = split_claim(b, ClaimCase.NON_DESIGNATED, 2, breadth(), who, state(), ON)
    assert isinstance(s, Split)
    assert (s.deductible_fen, s.fund_total_fen, s.flags) == (100_000, 200_000, ("CLAIM_NON_DESIGNATED",))


def test_a_case_the_policy_does_not_list_is_refused() -> None:
    b = claim_bill(VisitType.INPATIENT, 500_000)
    out = split_claim(b, ClaimCase.NON_DESIGNATED, 2, policy(CQ), person(CQ, "500103"), state(), ON)
    assert isinstance(out, Rejected) and out.code is Rejection.CLAIM_CASE_NOT_COVERED and out.code == 421


def test_a_recorded_claim_splits_again_exactly() -> None:
    who = person(CQ, "500103")
    b = claim_bill(VisitType.INPATIENT, 1_700_000, 100_000, 50_000, 150_000)
    first = split_claim(b, ClaimCase.OUT_OF_CITY, 3, policy(CQ), who, state(), ON)
    assert isinstance(first, Split)
    inputs = SettlementInputs(
        b,
        ON,
        claim_institution(ClaimCase.OUT_OF_CITY, 3),
        first.policy_version,
        "claim-receipts",
        "",
        "d1",
        0,
    )
    rules = RecordedRules("P1", CQ, policies={first.policy_version: policy(CQ)}, persons={"d1": who})
    again = rules.resplit(inputs, state(), NO_STAY)
    assert isinstance(again, Split) and Money.of(again) == Money.of(first)
