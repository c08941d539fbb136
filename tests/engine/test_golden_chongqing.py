"""Golden cases, Chongqing (citydata/policies/500000-chongqing.toml), worked by hand.
Residents: inpatient ratios 80/60/40 by level (tier 2: +5 points), caps 70,000 / 110,000 yuan (seed);
sample deductibles 100/100/400/800 yuan at levels 0/1/2/3, half on the second stay and none after.
Employees: sample deductibles 100/200/500/800 yuan, each later stay 20% lower (floor 100 yuan),
ratios 90/90/87/85 (retirees +3 points), basic cap 100,000 yuan, large-amount aid 80% above it."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.engine import Rejection

from .builders import CQ, JN, bill, catalog, entry, fund, institution, person, reject, settle, state

CAT = catalog(CQ, entry("T1", "A", "item"), entry("D9", "C"))
JN_CAT = catalog(JN, entry("T1", "A", "item"))


def inpatient(amount_fen: int):  # type: ignore[no-untyped-def]
    return bill("inpatient", ("T1", amount_fen, 1))


def test_resident_tier1_level2_first_stay() -> None:
    # 10,000 yuan stay. Deductible (level 2) 400.00. Eligible 9,600.00 x 60% = 5,760.00.
    # Critical illness base = deductible + co-payment = 400 + 3,840 = 4,240.00, under its
    # 15,000-yuan threshold: pays nothing. Residents have no personal account: cash 4,240.00.
    s = settle(inpatient(1_000_000), person(CQ, "500107", "resident"), institution(CQ, "500107", 2), CAT)
    assert (s.deductible_fen, fund(s, "basic"), fund(s, "critical_illness")) == (40_000, 576_000, 0)
    assert (s.fund_total_fen, s.account_fen, s.cash_fen) == (576_000, 0, 424_000)
    assert s.deltas == {
        "ded.inpatient": 40_000,
        "stays.inpatient": 1,
        "fund.basic": 576_000,
        "cost.basic": 960_000,
        "base.critical": 424_000,
    }
    assert [f.fund_code for f in s.funds] == ["390100", "390200"]


def test_resident_tier2_gets_five_more_points() -> None:
    # Same stay, tier 2: 9,600.00 x 65% = 6,240.00
    p = person(CQ, "500107", "resident", tiers=((2, date(2020, 1, 1)),))
    s = settle(inpatient(1_000_000), p, institution(CQ, "500107", 2), CAT)
    assert (fund(s, "basic"), s.cash_fen) == (624_000, 376_000)


def test_unapproved_level3_outside_insured_district_is_penalised() -> None:
    # Insured in Wanzhou (500101, not a main-city district), level-3 stay in Yuzhong (500103), no
    # approval: deductible 800 x 1.05 = 840.00; ratio 40 - 5 = 35%; 9,160.00 x 35% = 3,206.00
    p = person(CQ, "500101", "resident")
    s = settle(inpatient(1_000_000), p, institution(CQ, "500103", 3), CAT)
    assert (s.deductible_fen, fund(s, "basic"), s.flags) == (84_000, 320_600, ("PENALTY_LEVEL3",))


def test_main_city_nine_districts_are_exempt() -> None:
    # Insured in Jiulongpo (500107), stay in Yuzhong (500103): both main-city: 800.00, 9,200 x 40%
    s = settle(inpatient(1_000_000), person(CQ, "500107", "resident"), institution(CQ, "500103", 3), CAT)
    assert (s.deductible_fen, fund(s, "basic"), s.flags) == (80_000, 368_000, ())


def test_approved_level3_stay_is_not_penalised() -> None:
    p = person(CQ, "500101", "resident", approvals=(("level3", None),))
    s = settle(inpatient(1_000_000), p, institution(CQ, "500103", 3), CAT)
    assert (s.deductible_fen, fund(s, "basic")) == (80_000, 368_000)


def test_level3_rule_is_for_inpatient_care_only() -> None:
    # Outpatient at the same level-3 hospital: no penalty; resident outpatient level 3 = 30%, no
    # deductible: 100.00 x 30% = 30.00
    p = person(CQ, "500101", "resident")
    s = settle(bill("outpatient", ("T1", 10_000, 1)), p, institution(CQ, "500103", 3), CAT)
    assert (fund(s, "basic"), s.flags) == (3_000, ())


@pytest.mark.parametrize(
    ("stays_before", "deductible", "basic"),
    [
        (0, 10_000, 152_000),  # 1st stay: 100.00; (2,000 - 100) x 80% = 1,520.00
        (1, 5_000, 156_000),  # 2nd stay: half, 50.00; 1,950 x 80% = 1,560.00
        (2, 0, 160_000),  # 3rd stay and after: none; 2,000 x 80% = 1,600.00
        (5, 0, 160_000),
    ],
)
def test_resident_deductible_half_on_second_stay_none_after(
    stays_before: int, deductible: int, basic: int
) -> None:
    s = settle(
        inpatient(200_000),
        person(CQ, "500107", "resident"),
        institution(CQ, "500107", 1),
        CAT,
        state(0, stays_inpatient=stays_before),
    )
    assert (s.deductible_fen, fund(s, "basic"), s.deltas["stays.inpatient"]) == (deductible, basic, 1)


def test_resident_annual_maximum_then_critical_illness_bands() -> None:
    # Basic fund already paid 69,000 of 70,000 yuan; 3rd stay (no deductible) of 10,000 yuan at level 1:
    # 10,000 x 80% = 8,000 > 1,000 left -> basic pays 1,000.00 (remaining 0). The cost that covered:
    # 1,000 / 80% = 1,250.00; co-payment 250.00; excess over the cap 8,750.00.
    # Critical illness: base = excess + co-payment + deductible = 9,000.00 on top of 10,000.00 already
    # this year: 10,000 -> 15,000 is under the threshold (0), 15,000 -> 19,000 in the first band at 50%:
    # 2,000.00. Cash 10,000 - 1,000 - 2,000 = 7,000.00.
    s = settle(
        inpatient(1_000_000),
        person(CQ, "500107", "resident"),
        institution(CQ, "500107", 1),
        CAT,
        state(0, stays_inpatient=2, fund_basic=6_900_000, base_critical=1_000_000),
    )
    assert (fund(s, "basic"), fund(s, "critical_illness"), s.cash_fen) == (100_000, 200_000, 700_000)
    basic = next(f for f in s.funds if f.layer == "basic")
    assert basic.remaining_max_fen == 0
    assert s.deltas["base.critical"] == 900_000


def test_critical_illness_slice_across_a_band_boundary() -> None:
    # Critical-illness base already 60,000 yuan this year; the bands are measured on the excess over
    # 15,000: 50% to 65,000 total, 60% to 115,000. This stay adds 10,000 yuan of burden:
    # 5,000 x 50% + 5,000 x 60% = 5,500.00. (Basic cap already reached: the whole stay is excess.)
    s = settle(
        inpatient(1_000_000),
        person(CQ, "500107", "resident"),
        institution(CQ, "500107", 1),
        CAT,
        state(0, stays_inpatient=2, fund_basic=7_000_000, base_critical=6_000_000),
    )
    assert (fund(s, "basic"), fund(s, "critical_illness"), s.cash_fen) == (0, 550_000, 450_000)


def test_low_income_resident_gets_medical_assistance_after_critical_illness() -> None:
    # Level-2 first stay of 10,000 yuan: deductible 400, basic 5,760, burden 4,240 (under the
    # critical-illness threshold). Medical assistance 70% of 4,240 = 2,968.00. Cash 1,272.00.
    p = person(CQ, "500110", "resident", tags=frozenset({"low_income"}))
    s = settle(inpatient(1_000_000), p, institution(CQ, "500110", 2), CAT)
    assert (fund(s, "basic"), fund(s, "assistance"), s.cash_fen) == (576_000, 296_800, 127_200)
    assert "610100" in [f.fund_code for f in s.funds]


def test_employee_level3_first_stay_account_then_cash() -> None:
    # 5,000 yuan, level 3: deductible 800; 4,200 x 85% = 3,570.00. Person's share 1,430.00: the
    # personal account (balance 1,000.00) pays 1,000.00, cash 430.00.
    s = settle(inpatient(500_000), person(CQ, "500103"), institution(CQ, "500103", 3), CAT, state(100_000))
    assert (s.deductible_fen, fund(s, "basic"), s.account_fen, s.cash_fen) == (
        80_000,
        357_000,
        100_000,
        43_000,
    )
    assert s.account_balance_after_fen == 0


def test_employee_retiree_gets_three_more_points() -> None:
    # 4,200 x 88% = 3,696.00
    p = person(CQ, "500103", person_type="retiree", birth=date(1955, 1, 1))
    s = settle(inpatient(500_000), p, institution(CQ, "500103", 3), CAT)
    assert fund(s, "basic") == 369_600


@pytest.mark.parametrize(
    ("stays_before", "deductible"),
    [
        (0, 80_000),  # 1st stay: 800.00
        (1, 64_000),  # 2nd: 800 - 20% = 640.00
        (4, 16_000),  # 5th: 800 - 80% = 160.00
        (5, 10_000),  # 6th: 800 - 100% = 0, floor 100.00
    ],
)
def test_employee_deductible_reduces_each_stay_with_a_floor(stays_before: int, deductible: int) -> None:
    s = settle(
        inpatient(500_000),
        person(CQ, "500103"),
        institution(CQ, "500103", 3),
        CAT,
        state(0, stays_inpatient=stays_before),
    )
    assert s.deductible_fen == deductible


def test_employee_large_amount_aid_above_the_basic_cap() -> None:
    # Basic fund paid 99,500 of 100,000 yuan; 10,000-yuan level-3 first stay: deductible 800;
    # 9,200 x 85% = 7,820 > 500 left -> basic 500.00; cost covered floor(500 / 0.85) = 588.23;
    # excess 9,200 - 588.23 = 8,611.77; large-amount aid 80% = 6,889.416 -> 6,889.42.
    # Person: 10,000 - 500 - 6,889.42 = 2,610.58 (= 800 + 88.23 co-pay + 1,722.35 excess left).
    s = settle(
        inpatient(1_000_000),
        person(CQ, "500103"),
        institution(CQ, "500103", 3),
        CAT,
        state(0, fund_basic=9_950_000),
    )
    assert (fund(s, "basic"), fund(s, "large_amount"), s.cash_fen) == (50_000, 688_942, 261_058)
    assert s.deltas["base.large"] == 861_177
    assert [f.fund_code for f in s.funds] == ["310100", "330100"]


def test_migrant_worker_critical_illness_instead_of_large_amount_aid() -> None:
    # Same stay for a migrant worker: 8,611.77 x 70% = 6,028.239 -> 6,028.24, no large-amount aid
    p = person(CQ, "500103", person_type="migrant_worker")
    s = settle(inpatient(1_000_000), p, institution(CQ, "500103", 3), CAT, state(0, fund_basic=9_950_000))
    assert (fund(s, "migrant_critical"), fund(s, "large_amount")) == (602_824, 0)


def test_out_of_city_with_filing_uses_home_policy_and_treating_catalog() -> None:
    # Chongqing employee at a Jinan level-3 hospital, priced with Jinan's catalog, Chongqing's
    # policy: 5,000 yuan; deductible 800; 4,200 x 85% = 3,570.00
    p = person(CQ, "500104", approvals=(("filing", None),))
    s = settle(inpatient(500_000), p, institution(JN, "370102", 3), JN_CAT)
    assert (s.deductible_fen, fund(s, "basic"), s.flags) == (80_000, 357_000, ("CROSS_REGION",))
    assert s.catalog_version == "370100-test" and s.policy_version == "cq-2026.1"


def test_out_of_city_without_filing_settles_with_penalty() -> None:
    # No filing: deductible 800 x 1.05 = 840; ratio 85 - 5 = 80%: 4,160 x 80% = 3,328.00
    s = settle(inpatient(500_000), person(CQ, "500104"), institution(JN, "370102", 3), JN_CAT)
    assert (s.deductible_fen, fund(s, "basic")) == (84_000, 332_800)
    assert s.flags == ("CROSS_REGION", "PENALTY_OUT_OF_REGION")


def test_special_disease_needs_a_registration() -> None:
    # Registered M001, level 2: no deductible, 80%: 300.00 -> 240.00; account pays the 60.00 rest
    inst = institution(CQ, "500103", 2)
    registered = person(CQ, "500103", diseases=("M001",))
    s = settle(bill("special", ("T1", 30_000, 1), disease_code="M001"), registered, inst, CAT, state(100_000))
    assert (fund(s, "basic"), s.account_fen, s.cash_fen) == (24_000, 6_000, 0)
    r = reject(bill("special", ("T1", 30_000, 1), disease_code="M002"), registered, inst, CAT)
    assert r.code is Rejection.SPECIAL_DISEASE_NOT_REGISTERED
    r = reject(bill("special", ("T1", 30_000, 1)), registered, inst, CAT)
    assert r.code is Rejection.DISEASE_CODE_MISSING


def test_pharmacy_employee_pays_from_account_only() -> None:
    # Retail pharmacy: no pooled fund; the account (no scope limit in Chongqing) pays all 50.00 + 20.00
    pharmacy = institution(CQ, "500103", 0, "pharmacy", frozenset({"pharmacy"}))
    s = settle(
        bill("pharmacy", ("T1", 5_000, 1), ("D9", 2_000, 1)),
        person(CQ, "500103"),
        pharmacy,
        CAT,
        state(100_000),
    )
    assert (s.fund_total_fen, s.funds, s.account_fen, s.cash_fen) == (0, (), 7_000, 0)


def test_outpatient_yearly_deductible_met_across_visits() -> None:
    # 200.00 a year. Visit 1: 150.00, all deductible. Visit 2: 50.00 deductible, 50.00 x 60% = 30.00.
    # Visit 3: deductible met, 100.00 x 60% = 60.00.
    p, inst = person(CQ, "500106"), institution(CQ, "500106", 1)
    v1 = settle(bill("outpatient", ("T1", 15_000, 1)), p, inst, CAT)
    assert (v1.deductible_fen, v1.fund_total_fen, v1.deltas["ded.outpatient"]) == (15_000, 0, 15_000)
    v2 = settle(bill("outpatient", ("T1", 10_000, 1)), p, inst, CAT, state(0, ded_outpatient=15_000))
    assert (v2.deductible_fen, v2.fund_total_fen) == (5_000, 3_000)
    v3 = settle(bill("outpatient", ("T1", 10_000, 1)), p, inst, CAT, state(0, ded_outpatient=20_000))
    assert (v3.deductible_fen, v3.fund_total_fen) == (0, 6_000)


def test_outpatient_account_scope_excludes_full_selfpay() -> None:
    # Class C 20.00 + class A 100.00, deductible met, level 1: fund 60.00. Share 60.00 (= 20 + 40);
    # the account may not pay the 20.00 full self-pay: account 40.00, cash 20.00.
    p, inst = person(CQ, "500106"), institution(CQ, "500106", 1)
    b = bill("outpatient", ("D9", 2_000, 1), ("T1", 10_000, 1))
    s = settle(b, p, inst, CAT, state(100_000, ded_outpatient=20_000))
    assert (s.fund_total_fen, s.account_fen, s.cash_fen) == (6_000, 4_000, 2_000)
    low = settle(b, p, inst, CAT, state(1_000, ded_outpatient=20_000))  # balance 10.00
    assert (low.account_fen, low.cash_fen, low.account_balance_after_fen) == (1_000, 5_000, 0)
    declined = settle(
        bill("outpatient", ("D9", 2_000, 1), ("T1", 10_000, 1), use_account=False),
        p,
        inst,
        CAT,
        state(100_000, ded_outpatient=20_000),
    )
    assert (declined.account_fen, declined.cash_fen) == (0, 6_000)


def test_outpatient_annual_maximum() -> None:
    # 2,990 of 3,000 yuan used: 100.00 x 60% = 60.00 capped at 10.00
    s = settle(
        bill("outpatient", ("T1", 10_000, 1)),
        person(CQ, "500106"),
        institution(CQ, "500106", 1),
        CAT,
        state(0, ded_outpatient=20_000, fund_outpatient=299_000),
    )
    assert s.fund_total_fen == 1_000 and s.funds[0].remaining_max_fen == 0
