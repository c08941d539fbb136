"""Golden cases of the policy constructs that local rules beyond the four seed cities need, worked by
hand (the arithmetic is in the comments, in fen) and settled by examples/cases/policies/999800-breadth.toml,
one employee tier per construct. Each test also says what the old language would have paid, so a
construct that silently fell back to the old rule would fail."""

from __future__ import annotations

import dataclasses
from datetime import date
from functools import cache
from pathlib import Path

import pytest

from gateway.engine import Split, split
from gateway.engine.model import LEVEL_CODES, PersonState, Scheme, VisitType
from gateway.engine.policy import BasicLayer, Policy, RatioMeasure
from rules_cache.policy_files import load_policy_file
from rules_cache.reader import DataError

from .builders import ON, bill, catalog, entry, fund, institution, person, state

BR = "999800"
POLICY_FILE = Path(__file__).resolve().parents[2] / "examples" / "cases" / "policies" / "999800-breadth.toml"


@cache
def breadth() -> Policy:
    return load_policy_file(POLICY_FILE)


def settle(
    tier: int, level: int, *lines: tuple[str, int, int], st: PersonState | None = None, **who: object
) -> Split:
    cat = catalog(
        BR,
        entry("A1", "A", "item"),
        entry("B1", "B", "drug", selfpay_bp=1000),
        entry("IMP", "A", "material", group="implant_imported"),
        entry("FAC", "A", "facility"),
    )
    p = person(BR, "999801", "employee", ((tier, date(2020, 1, 1)),), **who)  # type: ignore[arg-type]
    result = split(
        bill("inpatient", *lines), breadth(), cat, institution(BR, "999801", level), p, st or state(), ON
    )
    assert isinstance(result, Split), result
    return result


def split_with(tier: int, basic: BasicLayer, *lines: tuple[str, int, int]) -> Split:
    """Settles with the tier's inpatient basic layer replaced (to show what the old rule pays)."""
    pol = breadth()
    plan = pol.plans[(Scheme.EMPLOYEE, tier)]
    benefit = dataclasses.replace(plan.benefits[VisitType.INPATIENT], basic=basic)
    plan = dataclasses.replace(plan, benefits={VisitType.INPATIENT: benefit})
    pol = dataclasses.replace(pol, plans={**pol.plans, (Scheme.EMPLOYEE, tier): plan})
    cat = catalog(BR, entry("A1", "A", "item"))
    p = person(BR, "999801", "employee", ((tier, date(2020, 1, 1)),))
    result = split(bill("inpatient", *lines), pol, cat, institution(BR, "999801", 2), p, state(), ON)
    assert isinstance(result, Split), result
    return result


def test_1_bands_measured_on_the_in_scope_cost_from_zero() -> None:
    # In scope 1,500,000; deductible 100,000 fills in-scope [0, 100,000).
    # Eligible 1,400,000 is the slice [100,000, 1,500,000):
    #   [100,000, 1,000,000) = 900,000 x 80% = 720,000
    #   [1,000,000, 1,500,000) = 500,000 x 90% = 450,000      -> basic 1,170,000
    # Measured on the eligible cost (the old rule): 1,000,000 x 80% + 400,000 x 90% = 1,160,000.
    s = settle(1, 2, ("A1", 1_500_000, 1))
    assert s.deductible_fen == 100_000
    assert fund(s, "basic") == 1_170_000
    assert s.cash_fen == 1_500_000 - 1_170_000
    # the same bill under the eligible-measured rule pays 1,160,000: the key is what changed it
    basic = breadth().plans[(Scheme.EMPLOYEE, 1)].benefits[VisitType.INPATIENT].basic
    assert basic is not None
    old_rule = dataclasses.replace(
        basic, ratio=dataclasses.replace(basic.ratio, measured_on=RatioMeasure.ELIGIBLE)
    )
    assert old_rule.ratio.measured_on is RatioMeasure.ELIGIBLE
    s_old = split_with(1, old_rule, ("A1", 1_500_000, 1))
    assert fund(s_old, "basic") == 1_160_000


def test_1_in_scope_bands_continue_over_the_year_and_the_stay() -> None:
    # A second part of one stay: earlier parts had 100,000 deductible and 500,000 eligible, so the
    # in-scope cost so far is 600,000. This part: 600,000 in scope, no deductible left.
    #   [600,000, 1,000,000) = 400,000 x 80% = 320,000; [1,000,000, 1,200,000) = 200,000 x 90% = 180,000
    from gateway.engine.model import StayTotals

    cat = catalog(BR, entry("A1", "A", "item"))
    p = person(BR, "999801", "employee", ((1, date(2020, 1, 1)),))
    part = StayTotals(1, 1, 600_000, 500_000, 100_000, 0, {}, 0)
    b = bill("inpatient", ("A1", 600_000, 1), stay_id="S1")
    s = split(b, breadth(), cat, institution(BR, "999801", 2), p, state(), ON, part)
    assert isinstance(s, Split)
    assert s.deductible_fen == 0
    assert fund(s, "basic") == 500_000


def test_2_annual_cost_maximum_counts_the_deductible() -> None:
    # Maximum 2,000,000 of in-scope cost a year, deductibles inside it. So far: cost 1,500,000 and
    # deductible 100,000 (an earlier stay). This stay: in scope 800,000, deductible 100,000.
    # Room = 2,000,000 - 1,500,000 - 100,000 - 100,000 = 300,000 of the 700,000 eligible:
    #   basic 300,000 x 80% = 240,000; excess 400,000.
    # Without the deductible inside: room 500,000 -> 400,000.
    s = settle(2, 2, ("A1", 800_000, 1), st=state(cost_basic=1_500_000, ded_inpatient=100_000))
    assert s.deductible_fen == 100_000
    assert fund(s, "basic") == 240_000
    assert s.deltas["cost.basic"] == 300_000
    assert s.funds[0].remaining_max_fen == 0
    # 9: the uncapped payment 700,000 x 80% = 560,000, of which 320,000 is above the maximum
    assert (s.basic_uncapped_fen, s.basic_over_cap_fen) == (560_000, 320_000)


def test_3_layer_base_includes_the_class_b_first_selfpay() -> None:
    # Class B drug 100,000 at 10% first self-pay: F 10,000, in scope 90,000.
    # Basic 90,000 x 80% = 72,000, co-payment P 18,000.
    # Layer base P + F = 28,000 x 50% = 14,000 (without F: 9,000). Cash 100,000 - 86,000 = 14,000.
    s = settle(3, 2, ("B1", 100_000, 1))
    assert s.first_selfpay_fen == 10_000
    assert fund(s, "basic") == 72_000
    assert fund(s, "supplementary") == 14_000
    assert s.deltas["base.supplementary"] == 28_000
    assert s.cash_fen == 14_000


def test_4_coinsurance_per_catalog_group_and_item_kind() -> None:
    # Ordinary item 200,000; imported implant 300,000 (group, 50% personal share); facility 20,000
    # (kind, fund 60%). In scope 520,000, deductible 50,000 taken from the ordinary lines first:
    #   ordinary (200,000 - 50,000) x 80% = 120,000; implant 300,000 x 50% = 150,000;
    #   facility 20,000 x 60% = 12,000                                   -> basic 282,000
    # With one ratio for all (the old rule): 470,000 x 80% = 376,000.
    s = settle(4, 2, ("A1", 200_000, 1), ("IMP", 300_000, 1), ("FAC", 20_000, 1))
    assert s.deductible_fen == 50_000
    assert fund(s, "basic") == 282_000
    assert s.cash_fen == 520_000 - 282_000


def test_4_deductible_spills_onto_grouped_lines_highest_ratio_first() -> None:
    # Ordinary 30,000 < deductible 50,000: 30,000 from it, the other 20,000 from the facility line
    # (60%, the higher of the fixed ratios) which is then 0; implant 300,000 x 50% = 150,000.
    s = settle(4, 2, ("A1", 30_000, 1), ("IMP", 300_000, 1), ("FAC", 20_000, 1))
    assert fund(s, "basic") == 150_000


def test_5_layer_on_the_copay_under_the_ceiling_and_a_layer_above_it() -> None:
    # In scope 1,000,000, no deductible; basic 80% with at most 400,000 a year:
    #   uncapped 800,000 -> 400,000 covers 500,000 of cost; co-payment P 100,000; excess X 500,000.
    # copay_aid (P only, not X): 100,000 x 50% = 50,000. large_amount (X): 500,000 x 90% = 450,000.
    # Cash 1,000,000 - 900,000 = 100,000.
    s = settle(5, 2, ("A1", 1_000_000, 1))
    assert [(f.layer, f.amount_fen) for f in s.funds] == [
        ("basic", 400_000),
        ("copay_aid", 50_000),
        ("large_amount", 450_000),
    ]
    assert s.deltas["base.copay_aid"] == 100_000
    assert s.cash_fen == 100_000
    # 9: what the ratio would pay without the maximum, and what the maximum cut off
    assert (s.basic_uncapped_fen, s.basic_over_cap_fen) == (800_000, 400_000)


def test_9_the_uncapped_payment_and_the_part_above_the_maximum() -> None:
    # 300,000 of the 400,000 maximum already paid; in scope 200,000:
    #   uncapped 200,000 x 80% = 160,000; paid 100,000 (covers 125,000 of cost); above the cap 60,000.
    #   P 25,000 -> copay_aid 12,500; X 75,000 -> large_amount 67,500. Cash 200,000 - 180,000 = 20,000.
    s = settle(5, 2, ("A1", 200_000, 1), st=state(fund_basic=300_000))
    assert fund(s, "basic") == 100_000
    assert (s.basic_uncapped_fen, s.basic_over_cap_fen) == (160_000, 60_000)
    assert fund(s, "copay_aid") == 12_500
    assert fund(s, "large_amount") == 67_500
    assert s.cash_fen == 20_000


def test_9_nothing_is_shown_when_the_maximum_cuts_nothing() -> None:
    s = settle(5, 2, ("A1", 100_000, 1))
    assert fund(s, "basic") == 80_000
    assert (s.basic_uncapped_fen, s.basic_over_cap_fen) == (0, 0)


@pytest.mark.parametrize(
    ("level", "stays", "person_type", "birth", "deductible"),
    [
        # level 2, third stay: 60,000 - 60,000 x 50% x 2 = 0, raised to level 2's floor 40,000
        (2, 2, "in_service", date(1980, 1, 1), 40_000),
        # level 0, second stay: 20,000 - 10,000 = 10,000, level 0's floor 10,000: 10,000
        (0, 1, "in_service", date(1980, 1, 1), 10_000),
        # level 3, second stay: 100,000 - 50,000 = 50,000 < floor 80,000: 80,000
        (3, 1, "in_service", date(1980, 1, 1), 80_000),
        # retiree aged 72 (born 1954-01-01, care 2026-06-15), level 3, first stay: the amount 30,000
        (3, 0, "retiree", date(1954, 1, 1), 30_000),
        # retiree aged 65, level 3, first stay: 100,000 x 80% = 80,000
        (3, 0, "retiree", date(1961, 1, 1), 80_000),
        # aged 70 exactly (birthday on 2026-06-15): the age rule matches: 30,000
        (3, 0, "retiree", date(1956, 6, 15), 30_000),
        # aged 69 (birthday tomorrow): 80,000
        (3, 0, "retiree", date(1956, 6, 16), 80_000),
    ],
)
def test_6_deductible_floors_by_level_and_person_rules(
    level: int, stays: int, person_type: str, birth: date, deductible: int
) -> None:
    s = settle(
        6, level, ("A1", 500_000, 1), st=state(stays_inpatient=stays), person_type=person_type, birth=birth
    )
    assert s.deductible_fen == deductible
    assert fund(s, "basic") == (500_000 - deductible) * 9 // 10


@pytest.mark.parametrize(("level", "layer"), [(0, 35_000), (1, 35_000), (2, 30_000), (3, 25_000)])
def test_7_layer_ratios_by_hospital_level(level: int, layer: int) -> None:
    # In scope 100,000: basic 50% = 50,000; co-payment 50,000 at 60% + the level's points:
    #   level 0/1 70% = 35,000; level 2 60% = 30,000; level 3 50% = 25,000
    s = settle(7, level, ("A1", 100_000, 1))
    assert fund(s, "basic") == 50_000
    assert fund(s, "critical_illness") == layer


@pytest.mark.parametrize(
    ("level", "deductible", "basic"),
    [
        ("county", 50_000, 40_000),  # deductible of grade 2 (not named); ratio 80%: 50,000 x 80%
        ("township", 10_000, 76_500),  # its own deductible; ratio of grade 1 85%: 90,000 x 85%
        ("community", 20_000, 76_000),  # grade 0's deductible; its own 95%: 80,000 x 95%
        ("provincial", 80_000, 12_000),  # everything of grade 3: 20,000 x 60%
        ("city", 80_000, 12_000),
    ],
)
def test_8_institution_tiers_beyond_the_grades(level: str, deductible: int, basic: int) -> None:
    s = settle(8, LEVEL_CODES[level], ("A1", 100_000, 1))
    assert s.deductible_fen == deductible
    assert fund(s, "basic") == basic


def test_8_old_policies_settle_a_tier_as_its_grade() -> None:
    # The shipped Chongqing file names no tiers: a county hospital settles as level 2 would.
    from .builders import CQ, policy

    cat = catalog(CQ, entry("A1", "A", "item"))
    p = person(CQ, "500103")
    b = bill("inpatient", ("A1", 500_000, 1))
    county = split(b, policy(CQ), cat, institution(CQ, "500103", LEVEL_CODES["county"]), p, state(), ON)
    grade2 = split(b, policy(CQ), cat, institution(CQ, "500103", 2), p, state(), ON)
    assert isinstance(county, Split) and isinstance(grade2, Split)
    assert (county.deductible_fen, county.fund_total_fen) == (grade2.deductible_fen, grade2.fund_total_fen)


def edited(old: str, new: str, tmp: Path) -> DataError:
    text = POLICY_FILE.read_text(encoding="utf-8")
    assert old in text, old
    bad = tmp / "999800-breadth.toml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_policy_file(bad)
    return caught.value


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'bands_measured_on = "in_scope"',
            'bands_measured_on = "total"',
            "plans[0].inpatient.ratio.bands_measured_on: 'total' is not one of: eligible, in_scope",
        ),
        (
            'annual_max_on = "cost"\n',
            "",
            "plans[1].inpatient.annual_max_counts_deductible: needs annual_max_on",
        ),
        (
            "include_first_selfpay = true",
            'include_first_selfpay = "yes"',
            "plans[2].layers[0].include_first_selfpay: expected true or false",
        ),
        (
            "implant_imported = { personal_bp = 5000 }",
            "implant_imported = { personal_bp = 5000, fund_bp = 5000 }",
            "plans[3].inpatient.ratio.by_group.implant_imported: give exactly one of fund_bp or personal_bp",
        ),
        (
            "facility = { fund_bp = 6000 }",
            "furniture = { fund_bp = 6000 }",
            "plans[3].inpatient.ratio.by_kind.furniture: 'furniture' is not one of: drug, item, material",
        ),
        (
            "include_copay = true\ninclude_excess = false",
            "include_excess = false",
            "plans[4].layers[0].include_excess: the layer's base would be empty",
        ),
        (
            "floor_by_level = { 0 = 10000, 1 = 15000, 2 = 40000, 3 = 80000 }",
            "floor_by_level = { 0 = 10000, 1 = 15000, 2 = 40000 }",
            "plans[5].inpatient.deductible.floor_by_level: missing level(s) [3]",
        ),
        (
            "min_age = 70\nstandard_fen = 30000",
            "min_age = 70",
            "plans[5].inpatient.deductible.person_rules[0]: give standard_fen, multiplier_bp or both",
        ),
        (
            'person_type = "retiree"\nmin_age = 70',
            'person_type = "pensioner"\nmin_age = 70',
            "plans[5].inpatient.deductible.person_rules[0].person_type: 'pensioner' is not one of",
        ),
        (
            "level_add_bp = { 0 = 1000, 1 = 1000, 2 = 0, 3 = -1000 }",
            "level_add_bp = { 0 = 1000, 1 = 1000, 2 = 0, 3 = -20000 }",
            "plans[6].layers[0].level_add_bp.3: -20000 is out of range",
        ),
        (
            "township = 10000",
            "township = 10000, 5 = 9000",
            "plans[7].inpatient.deductible.by_level.township: level township given twice",
        ),
        (
            "county = 8000",
            "county = 8000, parish = 1",
            "plans[7].inpatient.ratio.by_level: unknown field(s): parish",
        ),
    ],
)
def test_validation_errors_name_the_file_and_the_field(
    old: str, new: str, message: str, tmp_path: Path
) -> None:
    error = edited(old, new, tmp_path)
    assert str(error).startswith("999800-breadth.toml: "), error
    assert message in str(error), error


@pytest.mark.parametrize(("given", "level"), [("county", 6), ("6", 6), ("3", 3), ("community", 4)])
def test_an_institution_level_may_be_a_tier_by_name_or_number(given: str, level: int) -> None:
    from rules_cache.records import institution as parse_institution

    row = {"code": "H1", "name": "x", "type": "hospital", "level": given, "region": BR, "district": "999801"}
    row |= {"designated": "1", "visit_types": "inpatient"}
    assert parse_institution(row, "institutions.csv", "[0]").level == level


@pytest.mark.parametrize("given", ["parish", "9", "-1"])
def test_an_unknown_institution_level_is_refused_naming_the_field(given: str) -> None:
    from rules_cache.records import institution as parse_institution

    row = {"code": "H1", "name": "x", "type": "hospital", "level": given, "region": BR, "district": "999801"}
    row |= {"designated": "1", "visit_types": "inpatient"}
    with pytest.raises(DataError, match=r"institutions.csv: \[0\]\.level: .* is not a level"):
        parse_institution(row, "institutions.csv", "[0]")
