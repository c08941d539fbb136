"""Golden cases for Yancheng, Ziyang and Jinan (citydata/policies), worked by hand."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.engine import Rejection
from gateway.engine.model import VisitType

from .builders import CQ, JN, YC, ZY, bill, catalog, entry, fund, institution, person, reject, settle, state

YC_CAT = catalog(YC, entry("T1", "A", "item"))
ZY_CAT = catalog(ZY, entry("T1", "A", "item"))
JN_CAT = catalog(JN, entry("T1", "A", "item"), entry("D9", "C"))
CQ_CAT = catalog(CQ, entry("T1", "A", "item"))


def inpatient(amount_fen: int):  # type: ignore[no-untyped-def]
    return bill("inpatient", ("T1", amount_fen, 1))


# ---------------------------------------------------------------- Yancheng


def test_yancheng_employee_cost_bands_shifted_by_level() -> None:
    # Level 3: deductible 900.00; bands 85/90/95% with level-3 adjustment -5 points -> 80/85/90%.
    # 40,900 yuan stay: eligible 40,000: first 30,000 x 80% = 24,000 + 10,000 x 85% = 8,500 -> 32,500.00
    s = settle(inpatient(4_090_000), person(YC, "320902"), institution(YC, "320902", 3), YC_CAT)
    assert (s.deductible_fen, fund(s, "basic")) == (90_000, 3_250_000)


def test_yancheng_employee_retiree_bands_plus_three_points() -> None:
    # 83% and 88%: 30,000 x 83% + 10,000 x 88% = 24,900 + 8,800 = 33,700.00
    p = person(YC, "320902", person_type="retiree", birth=date(1958, 1, 1))
    s = settle(inpatient(4_090_000), p, institution(YC, "320902", 3), YC_CAT)
    assert fund(s, "basic") == 3_370_000


def test_yancheng_yearly_cap_on_deductibles() -> None:
    # Deductibles this year already 1,000.00 of the 1,500.00 cap; a level-3 stay's standard 900.00 is
    # limited to the 500.00 left. 10,500 yuan stay: 10,000 x 80% = 8,000.00
    s = settle(
        inpatient(1_050_000),
        person(YC, "320902"),
        institution(YC, "320902", 3),
        YC_CAT,
        state(0, ded_inpatient=100_000, stays_inpatient=2),
    )
    assert (s.deductible_fen, fund(s, "basic")) == (50_000, 800_000)


def test_yancheng_maternity_lump_sum() -> None:
    # Caesarean at level 2: lump sum 3,200.00 from the maternity fund (510100); bill 4,000.00 -> cash 800.00
    mother = person(YC, "320903", sex="F", birth=date(1994, 3, 18))
    inst = institution(YC, "320903", 2)
    s = settle(
        bill("maternity", ("T1", 400_000, 1), maternity_event="caesarean"),
        mother,
        inst,
        YC_CAT,
        state(50_000),
    )
    assert (s.funds[0].fund_code, s.fund_total_fen, s.account_fen, s.cash_fen) == (
        "510100",
        320_000,
        0,
        80_000,
    )
    # the lump sum is counted: once per event and plan-year (test_plan_year_golden.py)
    assert s.deltas == {"fund.maternity": 320_000, "count.fund.maternity.caesarean": 1}
    # A bill below the lump sum is paid in full by the fund
    small = settle(bill("maternity", ("T1", 250_000, 1), maternity_event="caesarean"), mother, inst, YC_CAT)
    assert (small.fund_total_fen, small.cash_fen) == (250_000, 0)
    r = reject(bill("maternity", ("T1", 250_000, 1), maternity_event="twins"), mother, inst, YC_CAT)
    assert r.code is Rejection.MATERNITY_EVENT_UNKNOWN


def test_yancheng_resident_maximum_on_eligible_cost_then_critical_illness_on_total() -> None:
    # The resident maximum is 250,000 yuan of eligible cost; 249,000 used. Level-2 stay of 10,600:
    # deductible 600; eligible 10,000 of which only 1,000 fits: 1,000 x 70% = 700.00; co-payment 300;
    # excess 9,000. Critical illness (deductible excluded): base 9,300 on top of 20,000 already, bands
    # measured on the total burden: 60% up to 100,000 -> 5,580.00.
    # Cash: 10,600 - 700 - 5,580 = 4,320.00 (= 600 deductible + 300 co-pay + 3,420 excess left).
    s = settle(
        bill("inpatient", ("T1", 1_060_000, 1)),
        person(YC, "320921", "resident"),
        institution(YC, "320921", 2),
        YC_CAT,
        state(0, cost_basic=24_900_000, base_critical=2_000_000),
    )
    assert (s.deductible_fen, fund(s, "basic"), fund(s, "critical_illness")) == (60_000, 70_000, 558_000)
    assert s.cash_fen == 432_000
    assert s.deltas["cost.basic"] == 100_000 and s.deltas["base.critical"] == 930_000


def test_yancheng_resident_critical_illness_threshold_on_total_burden() -> None:
    # Same stay with 10,000 yuan of burden so far: 10,000 -> 15,000 pays nothing, 15,000 -> 19,300 at
    # 60% = 2,580.00
    s = settle(
        inpatient(1_060_000),
        person(YC, "320921", "resident"),
        institution(YC, "320921", 2),
        YC_CAT,
        state(0, cost_basic=24_900_000, base_critical=1_000_000),
    )
    assert fund(s, "critical_illness") == 258_000


def test_yancheng_civil_servant_subsidy_on_deductible_and_copay() -> None:
    # Level 2 (bands +0: 85% to 30,000): 10,000 yuan: deductible 600; 9,400 x 85% = 7,990; co-pay 1,410.
    # Large-amount aid: no excess, 0. Civil-servant subsidy: 50% of (600 + 1,410) = 1,005.00.
    # Share 1,005.00; account balance 500.00 pays 500.00, cash 505.00.
    p = person(YC, "320902", tags=frozenset({"civil_servant"}))
    s = settle(inpatient(1_000_000), p, institution(YC, "320903", 2), YC_CAT, state(50_000))
    assert (fund(s, "basic"), fund(s, "large_amount"), fund(s, "civil_servant")) == (799_000, 0, 100_500)
    assert (s.account_fen, s.cash_fen) == (50_000, 50_500)


# ---------------------------------------------------------------- Ziyang


@pytest.mark.parametrize(
    ("tiers", "on", "basic"),
    [
        # upgrade 4 -> 3 applied 2026-07-15: waits 6 months from the next month: tier 3 from 2027-02-01
        (((4, date(2020, 1, 1)), (3, date(2026, 7, 15))), date(2026, 12, 31), 65_000),
        (((4, date(2020, 1, 1)), (3, date(2026, 7, 15))), date(2027, 2, 1), 70_000),
        # downgrade 3 -> 4 applied 2026-10-20: tier 4 from 2026-11-01
        (((3, date(2020, 1, 1)), (4, date(2026, 10, 20))), date(2026, 10, 31), 70_000),
        (((3, date(2020, 1, 1)), (4, date(2026, 10, 20))), date(2026, 11, 1), 65_000),
        # upgrade pending, then a downgrade back before it took effect: the upgrade never applies
        (((4, date(2020, 1, 1)), (3, date(2026, 7, 15)), (4, date(2026, 9, 1))), date(2027, 3, 1), 65_000),
    ],
)
def test_ziyang_tier_switching(tiers: tuple[tuple[int, date], ...], on: date, basic: int) -> None:
    # Level 2, deductible 500; 1,500 yuan stay: 1,000 x 70% (tier 3) or 65% (tier 4)
    p = person(ZY, "512022", "resident", tiers=tiers)
    s = settle(inpatient(150_000), p, institution(ZY, "512022", 2), ZY_CAT, state(), on)
    assert fund(s, "basic") == basic


@pytest.mark.parametrize(
    ("birth", "basic"),
    [
        (date(1966, 6, 15), 80_000),  # exactly 60: no bonus, 80%
        (date(1956, 3, 3), 81_000),  # 70: +10 x 0.1 = +1 point
        (date(1941, 1, 1), 82_500),  # 85: +2.5 points
        (date(1920, 1, 1), 84_600),  # 106: +4.6 points
        (date(1911, 1, 1), 85_000),  # 115: +5.5 capped at +5 points
    ],
)
def test_ziyang_ratio_by_age_formula(birth: date, basic: int) -> None:
    # Tier 1, level 3: deductible 600; 1,600 yuan stay: 1,000 x (80% + age bonus)
    p = person(ZY, "512002", person_type="retiree", birth=birth)
    s = settle(inpatient(160_000), p, institution(ZY, "512002", 3), ZY_CAT)
    assert fund(s, "basic") == basic


def test_ziyang_rejects_unfiled_out_of_region_care_and_settles_filed() -> None:
    cq_hospital = institution(CQ, "500103", 3)
    r = reject(inpatient(160_000), person(ZY, "512002"), cq_hospital, CQ_CAT)
    assert r.code is Rejection.OUT_OF_REGION_NOT_FILED
    # With a referral: Ziyang tier 1 at level 3: 1,000 x 80% = 800.00 (age 46: no bonus)
    filed = person(ZY, "512002", approvals=(("referral", None),))
    s = settle(inpatient(160_000), filed, cq_hospital, CQ_CAT)
    assert (fund(s, "basic"), s.flags) == (80_000, ("CROSS_REGION",))


# ---------------------------------------------------------------- Jinan


def test_jinan_pharmacy_account_only_and_not_for_full_selfpay() -> None:
    # Seed: the pooled fund pays only at hospitals. Class A 30.00 + class C 20.00: account pays the
    # 30.00, not the full self-pay 20.00, which is cash.
    pharmacy = institution(JN, "370102", 0, "pharmacy", frozenset({VisitType.PHARMACY}))
    s = settle(
        bill("pharmacy", ("T1", 3_000, 1), ("D9", 2_000, 1)),
        person(JN, "370102"),
        pharmacy,
        JN_CAT,
        state(100_000),
    )
    assert (s.fund_total_fen, s.account_fen, s.cash_fen) == (0, 3_000, 2_000)
    # Residents have no pharmacy benefit at all
    r = reject(bill("pharmacy", ("T1", 3_000, 1)), person(JN, "370102", "resident"), pharmacy, JN_CAT)
    assert r.code is Rejection.VISIT_TYPE_NOT_COVERED


def test_jinan_retiree_half_deductible_and_four_more_points() -> None:
    # Level 3: deductible 1,000 x 50% = 500.00; ratio 85 + 4 = 89%; 2,500 yuan: 2,000 x 89% = 1,780.00
    p = person(JN, "370104", person_type="retiree", birth=date(1954, 8, 16))
    s = settle(inpatient(250_000), p, institution(JN, "370104", 3), JN_CAT)
    assert (s.deductible_fen, fund(s, "basic")) == (50_000, 178_000)


def test_jinan_relief_fund_above_the_basic_cap() -> None:
    # 199,900 of 200,000 yuan used. Level 3, 11,000 yuan: deductible 1,000; 10,000 x 85% = 8,500 > 100
    # left -> basic 100.00; covered floor(100 / 0.85) = 117.64; excess 9,882.36; relief 90% = 8,894.124
    # -> 8,894.12. Share 11,000 - 100 - 8,894.12 = 2,005.88.
    s = settle(
        inpatient(1_100_000),
        person(JN, "370102"),
        institution(JN, "370102", 3),
        JN_CAT,
        state(0, fund_basic=19_990_000),
    )
    assert (fund(s, "basic"), fund(s, "relief_fund"), s.person_share_fen) == (10_000, 889_412, 200_588)


def test_jinan_resident_yearly_cost_bands() -> None:
    # Level 2 (bands +5 points: 65% to 10,000 yuan of the year's eligible cost, 70% to 50,000).
    # 9,000 yuan already this year; 2,600 stay: deductible 600; eligible 2,000 spans the boundary:
    # 1,000 x 65% + 1,000 x 70% = 1,350.00
    s = settle(
        inpatient(260_000),
        person(JN, "370103", "resident"),
        institution(JN, "370103", 2),
        JN_CAT,
        state(0, cost_basic=900_000),
    )
    assert (s.deductible_fen, fund(s, "basic")) == (60_000, 135_000)


def test_jinan_low_income_resident_medical_assistance() -> None:
    # Level 1: deductible 300; 70% on the first band; 1,300 yuan: 1,000 x 70% = 700; co-pay 300.
    # Critical illness: 600 of burden, under the 12,000 threshold. Assistance 70% of 600 = 420.00.
    p = person(JN, "370124", "resident", tags=frozenset({"low_income"}))
    s = settle(inpatient(130_000), p, institution(JN, "370124", 1), JN_CAT)
    assert (fund(s, "basic"), fund(s, "critical_illness"), fund(s, "assistance")) == (70_000, 0, 42_000)
    assert s.cash_fen == 18_000


def test_jinan_outpatient_deductible_already_partly_met() -> None:
    # 300.00 of the 600.00 yearly deductible met; level 2 visit of 500.00: 300 deductible, 200 x 55% = 110
    s = settle(
        bill("outpatient", ("T1", 50_000, 1)),
        person(JN, "370102"),
        institution(JN, "370102", 2),
        JN_CAT,
        state(0, ded_outpatient=30_000),
    )
    assert (s.deductible_fen, s.fund_total_fen) == (30_000, 11_000)


# ---------------------------------------------------------------- rejections


def test_rejections_name_the_reason() -> None:
    inst = institution(JN, "370102", 2)
    p = person(JN, "370102")
    not_designated = institution(JN, "370102", 2, designated=False)
    assert reject(inpatient(1_000), p, not_designated, JN_CAT).code is Rejection.INSTITUTION_NOT_DESIGNATED
    clinic = institution(JN, "370102", 0, "clinic", frozenset({VisitType.OUTPATIENT}))
    assert reject(inpatient(1_000), p, clinic, JN_CAT).code is Rejection.VISIT_TYPE_NOT_AGREED
    suspended = person(JN, "370102", status="suspended")
    assert reject(inpatient(1_000), suspended, inst, JN_CAT).code is Rejection.ENROLMENT_SUSPENDED
    before = reject(inpatient(1_000), p, inst, JN_CAT, on=date(2019, 12, 31))
    assert before.code is Rejection.NOT_ENROLLED
    unknown = reject(bill("inpatient", ("T1", 100, 1), ("X404", 100, 1)), p, inst, JN_CAT)
    assert (unknown.code, unknown.line_no) == (Rejection.UNKNOWN_ITEM, 2)
    assert "X404" in unknown.reason
    no_policy = reject(inpatient(1_000), p, inst, JN_CAT, on=date(2025, 6, 1))
    assert no_policy.code is Rejection.POLICY_NOT_IN_FORCE
    resident_tier9 = person(JN, "370102", "resident", tiers=((9, date(2020, 1, 1)),))
    assert reject(inpatient(1_000), resident_tier9, inst, JN_CAT).code is Rejection.NO_PLAN
