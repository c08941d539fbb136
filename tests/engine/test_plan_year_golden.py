"""A year of bills, worked by hand: the cases outside testing found when a person's state was a pair
of counters per person and year. Each runs through the pure core (split, admit, correct) as the service
does; the e2e versions on real Redis are in tests/gateway/test_money_over_time.py."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from gateway.engine import Rejected, Rejection, Split, split
from gateway.engine.corrections import Corrected, Money
from gateway.engine.model import Enrolment, EnrolmentStatus, PersonType, Scheme, TierChange
from gateway.engine.money import InvariantViolation
from gateway.engine.plan_year import (
    ACCUMULATOR_MAX,
    BILL_TOTAL_MAX_FEN,
    LIVE_SETTLEMENTS_MAX,
    Contribution,
    PlanKey,
    add,
    empty,
)
from gateway.engine.policy import Corrections
from rules_cache.policy_files import parse_policy
from rules_cache.reader import DataError

from .book import Book
from .builders import CQ, JN, YC, bill, catalog, entry, fund, institution, person, policy, state

JN_CAT = catalog(JN, entry("T1", "A", "item"))
CQ_CAT = catalog(
    CQ,
    entry("T1", "A", "item"),
    entry("C9", "C"),  # full self-pay: nothing of it is in scope
    entry("D1", "A", "drug", quantity_per_visit_max=10),
)
YC_CAT = catalog(YC, entry("T1", "A", "item"))


def stay(amount_fen: int, **kw: object):  # type: ignore[no-untyped-def]
    return bill("inpatient", ("T1", amount_fen, 1), **kw)


def paid(outcome: Split | Rejected, layer: str) -> int:
    assert isinstance(outcome, Split), outcome
    return fund(outcome, layer)


# ---------------------------------------------------------------- corrections of earlier settlements


def jinan_two_stays() -> tuple[Book, str, str]:
    # Jinan resident, level-2 hospital: deductible 600.00 a stay; yearly cost bands 60/65/70% plus 5
    # points at level 2 -> 65/70/75%; critical illness insurance above 12,000.00 of the year's burden.
    # Stay 1, 30,000.00: eligible 29,400: 10,000 x 65% + 19,400 x 70% = 6,500 + 13,580 = 20,080.00;
    #   burden 600 + 9,320 = 9,920.00, below the threshold: critical illness 0.
    # Stay 2, 30,000.00: eligible 29,400 from 29,400 of the year: 20,600 x 70% + 8,800 x 75%
    #   = 14,420 + 6,600 = 21,020.00; burden 600 + 8,380 = 8,980, the year's 18,900: 6,900 above the
    #   threshold x 50% = 3,450.00.
    book = Book(person(JN, "370102", "resident", person_type="adult"), {JN: policy(JN)}, {JN: JN_CAT})
    inst = institution(JN, "370102", 2)
    first = book.ok(stay(3_000_000), inst, date(2026, 3, 2))
    first_id = book.last_id
    second = book.ok(stay(3_000_000), inst, date(2026, 5, 11))
    assert (fund(first, "basic"), fund(first, "critical_illness")) == (2_008_000, 0)
    assert (fund(second, "basic"), fund(second, "critical_illness")) == (2_102_000, 345_000)
    return book, first_id, book.last_id


def test_reversing_a_stay_that_a_later_one_stood_on_is_refused_and_names_the_later_one() -> None:
    book, first, second = jinan_two_stays()
    before = book.paid()
    outcome = book.reverse(first)
    assert isinstance(outcome, Rejected) and outcome.code is Rejection.LATER_SETTLEMENTS_EXIST
    assert f"{second} (H37010200002, 2026-05-11)" in outcome.reason
    assert book.paid() == before, "nothing changed"


def test_readjudication_takes_back_the_4390_yuan_the_second_stay_only_earned_from_the_first() -> None:
    # Alone, stay 2 is what stay 1 was: basic 20,080.00 and no critical illness. It had 21,020 + 3,450:
    # 940.00 of basic fund and 3,450.00 of critical illness insurance, 4,390.00 that are owed back
    # (the institution collects them from the patient as cash).
    book, first, second = jinan_two_stays()
    outcome = book.reverse(first, Corrections.READJUDICATE)
    assert isinstance(outcome, Corrected)
    reverse, adjust = outcome.changes
    assert (reverse.kind, reverse.settlement_id, reverse.difference.funds) == (
        "reverse",
        first,
        {"390100": -2_008_000},
    )
    assert (adjust.kind, adjust.settlement_id) == ("adjust", second)
    assert adjust.difference == Money(0, {"390100": -94_000, "390200": -345_000}, 0, 439_000)
    key = PlanKey(JN, "resident", 2026)
    assert book.paid(key) == book.from_scratch(key) == Money(3_000_000, {"390100": 2_008_000}, 0, 992_000)
    assert book.years[key].live == (second,)


# ---------------------------------------------------------------- plan-years


def test_a_plan_change_mid_year_starts_the_new_plan_with_nothing_used() -> None:
    # Chongqing employee until July, resident from August. The employee plan's basic fund paid its whole
    # 100,000.00 by March; the resident plan's 70,000.00 is untouched by it. A 10,000-yuan stay at a
    # level-1 hospital in August: deductible 100.00, 80% of 9,900 = 7,920.00.
    base = person(CQ, "500107")
    employee = dataclasses.replace(base.enrolments[0], valid_to=date(2026, 7, 31))
    resident = Enrolment(
        CQ,
        "500107",
        Scheme.RESIDENT,
        PersonType.ADULT,
        EnrolmentStatus.ACTIVE,
        date(2026, 8, 1),
        None,
        (TierChange(1, date(2026, 8, 1)),),
    )
    p = dataclasses.replace(base, enrolments=(employee, resident))
    book = Book(p, {CQ: policy(CQ)}, {CQ: CQ_CAT}, balance_fen=0)
    inst = institution(CQ, "500107", 1)
    march = book.ok(stay(20_000_000), inst, date(2026, 3, 9))
    assert fund(march, "basic") == 10_000_000, "the employee plan's annual maximum, all used"
    august = book.ok(stay(1_000_000), inst, date(2026, 8, 20))
    assert (august.deductible_fen, fund(august, "basic")) == (10_000, 792_000)
    assert set(book.years) == {PlanKey(CQ, "employee", 2026), PlanKey(CQ, "resident", 2026)}


def test_moving_city_mid_year_starts_the_new_region_with_nothing_used() -> None:
    # Jinan employee until June, Chongqing employee from July: the Jinan stays do not count as the
    # first stays of the Chongqing plan (its deductible falls 20% a stay).
    jinan = dataclasses.replace(person(JN, "370102").enrolments[0], valid_to=date(2026, 6, 30))
    chongqing = dataclasses.replace(
        person(CQ, "500107").enrolments[0],
        valid_from=date(2026, 7, 1),
        tiers=(TierChange(1, date(2026, 7, 1)),),
    )
    p = dataclasses.replace(person(JN, "370102"), enrolments=(jinan, chongqing))
    book = Book(p, {JN: policy(JN), CQ: policy(CQ)}, {JN: JN_CAT, CQ: CQ_CAT})
    for month in (2, 4):
        book.ok(stay(1_000_000), institution(JN, "370102", 3), date(2026, month, 3))
    first_here = book.ok(stay(1_000_000), institution(CQ, "500107", 3), date(2026, 9, 1))
    assert first_here.deductible_fen == 80_000, "the first Chongqing stay pays the full 800.00"


# ---------------------------------------------------------------- counters that cannot be gamed


def test_stays_with_nothing_in_scope_do_not_count_as_stays() -> None:
    # Chongqing resident at level 3: deductible 800.00, half on the second stay, none after. Two
    # "stays" of nothing but a full self-pay item must not make the real first stay a third one.
    book = Book(person(CQ, "500107", "resident"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    inst = institution(CQ, "500107", 3)
    for _ in range(2):
        empty_stay = book.ok(bill("inpatient", ("C9", 5_000, 1)), inst)
        assert (empty_stay.in_scope_fen, empty_stay.deductible_fen) == (0, 0)
        assert "stays.inpatient" not in empty_stay.deltas
    real = book.ok(stay(1_000_000), inst)
    assert (real.deductible_fen, real.deltas["stays.inpatient"]) == (80_000, 1)


def test_a_maternity_lump_sum_is_paid_once_per_event_and_year() -> None:
    # Yancheng: caesarean at level 2, lump sum 3,200.00. A second caesarean bill of the same year is
    # refused, until the first one is reversed.
    mother = person(YC, "320903", sex="F", birth=date(1994, 3, 18))
    book = Book(mother, {YC: policy(YC)}, {YC: YC_CAT})
    inst = institution(YC, "320903", 2)
    first = book.ok(bill("maternity", ("T1", 400_000, 1), maternity_event="caesarean"), inst)
    assert first.fund_total_fen == 320_000
    again = book.settle(bill("maternity", ("T1", 400_000, 1), maternity_event="caesarean"), inst)
    assert isinstance(again, Rejected) and again.code is Rejection.MATERNITY_LUMP_SUM_USED
    assert isinstance(book.reverse(book.last_id), Corrected)
    assert (
        book.ok(bill("maternity", ("T1", 400_000, 1), maternity_event="caesarean"), inst).fund_total_fen
        == 320_000
    )


def shipped(region: str) -> dict[str, object]:
    import tomllib
    from pathlib import Path

    path = min((Path(__file__).resolve().parents[2] / "citydata" / "policies").glob(f"{region}-*.toml"))
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_the_loader_refuses_two_layers_on_one_counter() -> None:
    # Two layers paying from one counter, each against a 50-million maximum, together paid 60 million.
    data = shipped(CQ)
    data["plans"][0]["layers"][1]["fund_key"] = "fund.large"  # type: ignore[index]
    with pytest.raises(DataError) as info:
        parse_policy(data, "cq.toml")
    assert "plans[0].layers[1].fund_key" in str(info.value) and "layer large_amount" in str(info.value)


def test_the_loader_refuses_a_layer_on_a_basic_counter_and_basic_benefits_with_two_maxima() -> None:
    data = shipped(CQ)
    data["plans"][0]["layers"][0]["fund_key"] = "fund.basic"  # type: ignore[index]
    with pytest.raises(DataError, match="already the fund counter of basic"):
        parse_policy(data, "cq.toml")
    data = shipped(CQ)
    data["plans"][0]["special"]["annual_max_fen"] = 20_000_000  # type: ignore[index]
    with pytest.raises(DataError, match=r"shared by basic inpatient and basic special with different annual"):
        parse_policy(data, "cq.toml")


def test_every_capped_counter_is_checked_after_the_bill_whoever_moved_it() -> None:
    # A plan built behind the loader's back with two layers on one counter (each 50 million): the split
    # raises instead of paying beyond the counter's maximum.
    cq = policy(CQ)
    plan = cq.plans[(Scheme.EMPLOYEE, 1)]
    large = plan.layers[0]
    twin = dataclasses.replace(large, name="twin", person_types=frozenset())
    shared = dataclasses.replace(plan, layers=(large, twin))
    rogue = dataclasses.replace(cq, plans={**cq.plans, (Scheme.EMPLOYEE, 1): shared})
    p = person(CQ, "500107")
    st = state(0, fund_basic=10_000_000, fund_large=49_000_000, base_large=61_250_000)
    with pytest.raises(InvariantViolation, match=r"fund\.large: 49000000 \+ \d+ exceeds its annual maximum"):
        split(stay(500_000_000), rogue, CQ_CAT, institution(CQ, "500107", 3), p, st, date(2026, 6, 15))


# ---------------------------------------------------------------- partial refunds


def three_line_visit() -> tuple[Book, str]:
    # Chongqing employee, level-3 stay: D1 10 x 35.00, T1 2,000.00, T1 1,500.00 = 3,850.00 in scope.
    # Deductible 800.00; basic 85% of 3,050 = 2,592.50; the rest 1,257.50 from the account.
    book = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT}, balance_fen=500_000)
    s = book.ok(
        bill("inpatient", ("D1", 3_500, 10), ("T1", 200_000, 1), ("T1", 150_000, 1)),
        institution(CQ, "500107", 3),
    )
    assert (s.deductible_fen, fund(s, "basic"), s.account_fen) == (80_000, 259_250, 125_750)
    return book, book.last_id


def test_a_partial_refund_resplits_the_rest_in_place() -> None:
    # Four of the ten D1 come back: 140.00 less in scope, 3,710.00. Basic 85% of 2,910 = 2,473.50
    # (119.00 less); the person's share 1,236.50 (21.00 less), all of it back to the account.
    book, sid = three_line_visit()
    outcome = book.refund(sid, (1, 4))
    assert isinstance(outcome, Corrected)
    (change,) = outcome.changes
    assert change.kind == "refund" and change.split is not None
    assert change.split.lines[0].amount_fen == 21_000 and fund(change.split, "basic") == 247_350
    assert change.difference == Money(-14_000, {"310100": -11_900}, -2_100, 0)
    assert book.balance_fen == 500_000 - 125_750 + 2_100
    assert book.years[PlanKey(CQ, "employee", 2026)].live == (sid,), "in place: still the first"


def test_a_refund_of_an_earlier_settlement_waits_for_the_later_ones_or_readjudicates_them() -> None:
    # The refunded stay was the person's first: the second stay's deductible (20% lower: 640.00) stands
    # on it. Refused by default; re-adjudicated, the second stay is split again in its place and only
    # what changed is booked (here nothing: a refund does not change the stay count).
    book, first = three_line_visit()
    book.ok(stay(1_000_000), institution(CQ, "500107", 3))
    second = book.last_id
    refused = book.refund(first, (2, 1))
    assert isinstance(refused, Rejected) and refused.code is Rejection.LATER_SETTLEMENTS_EXIST
    assert second in refused.reason
    done = book.refund(first, (2, 1), mode=Corrections.READJUDICATE)
    assert isinstance(done, Corrected)
    assert [c.kind for c in done.changes] == ["refund"], "the second stay pays what it paid"
    key = PlanKey(CQ, "employee", 2026)
    assert book.years[key].live == (first, second)
    assert book.paid(key) == book.from_scratch(key)


def test_a_refund_names_a_line_and_quantity_the_settlement_has() -> None:
    book, sid = three_line_visit()
    for lines, code in [
        (((9, 1),), Rejection.REFUND_INVALID),
        (((1, 11),), Rejection.REFUND_INVALID),
        (((1, 6), (1, 5)), Rejection.REFUND_INVALID),
        (((1, 10), (2, 1), (3, 1)), Rejection.REFUND_WHOLE_BILL),
    ]:
        outcome = book.refund(sid, *lines)
        assert isinstance(outcome, Rejected) and outcome.code is code, lines


# ---------------------------------------------------------------- interim settlements of one stay


def test_a_stay_settled_in_interim_parts_is_one_stay_with_one_deductible() -> None:
    # Chongqing employee, level 3: 800.00 deductible for the first stay. Part 1 (interim) 3,000.00:
    # deductible 800, basic 85% of 2,200 = 1,870.00. Part 2 (final) 2,000.00: no deductible left,
    # basic 85% = 1,700.00. Together what one 5,000-yuan stay pays: 85% of 4,200 = 3,570.00.
    book = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    inst = institution(CQ, "500107", 3)
    one = book.ok(stay(300_000, stay_id="ZY2026-1", interim=True), inst)
    two = book.ok(stay(200_000, stay_id="ZY2026-1"), inst)
    assert (one.deductible_fen, fund(one, "basic")) == (80_000, 187_000)
    assert (two.deductible_fen, fund(two, "basic")) == (0, 170_000)
    whole = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT}).ok(stay(500_000), inst)
    assert fund(one, "basic") + fund(two, "basic") == fund(whole, "basic") == 357_000
    key = PlanKey(CQ, "employee", 2026)
    assert book.years[key].accumulators["stays.inpatient"] == 1
    assert book.years[key].stays["ZY2026-1"].closed == 1
    third = book.settle(stay(10_000, stay_id="ZY2026-1"), inst)
    assert isinstance(third, Rejected) and third.code is Rejection.STAY_CLOSED
    # the next stay is the second of the year: 20% lower, 640.00
    assert book.ok(stay(100_000), inst).deductible_fen == 64_000


def test_per_visit_quantity_limits_hold_across_the_parts_of_a_stay() -> None:
    # D1 is covered for 10 units a visit: 6 in part 1, then 6 more in part 2 of which 2 are covered.
    book = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    inst = institution(CQ, "500107", 3)
    book.ok(bill("inpatient", ("D1", 1_000, 6), stay_id="S1", interim=True), inst)
    two = book.ok(bill("inpatient", ("D1", 1_000, 6), stay_id="S1"), inst)
    assert (two.lines[0].in_scope_fen, two.lines[0].full_selfpay_fen) == (4_000, 2_000)


def test_reversing_the_final_part_reopens_the_stay() -> None:
    book = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    inst = institution(CQ, "500107", 3)
    book.ok(stay(300_000, stay_id="S1", interim=True), inst)
    book.ok(stay(200_000, stay_id="S1"), inst)
    assert isinstance(book.reverse(book.last_id), Corrected)
    again = book.ok(stay(250_000, stay_id="S1"), inst)
    assert (again.deductible_fen, fund(again, "basic")) == (0, 212_500)


def test_a_part_with_nothing_in_scope_does_not_count_the_stay_yet() -> None:
    book = Book(person(CQ, "500107", "resident"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    inst = institution(CQ, "500107", 3)
    first = book.ok(bill("inpatient", ("C9", 5_000, 1), stay_id="S1", interim=True), inst)
    assert "stays.inpatient" not in first.deltas
    second = book.ok(stay(1_000_000, stay_id="S1"), inst)
    assert (second.deductible_fen, second.deltas["stays.inpatient"]) == (80_000, 1)


# ---------------------------------------------------------------- bounds


def test_a_plan_year_holds_a_bounded_number_of_settlements() -> None:
    year = empty(PlanKey(CQ, "employee", 2026))
    for i in range(LIVE_SETTLEMENTS_MAX):
        year = dataclasses.replace(year, live=(*year.live, f"S{i}"))
    book = Book(person(CQ, "500107"), {CQ: policy(CQ)}, {CQ: CQ_CAT})
    book.years[year.key] = year
    outcome = book.settle(bill("outpatient", ("T1", 1_000, 1)), institution(CQ, "500107", 1))
    assert isinstance(outcome, Rejected) and outcome.code is Rejection.PLAN_YEAR_FULL


def test_no_accumulator_can_pass_what_a_lua_number_holds_exactly() -> None:
    # The largest bill, as often as a plan-year may hold settlements, stays far below 2^53 (a Lua
    # number is a double) and 2^63 (BIGINT): nothing a year of bills adds can overflow.
    assert ACCUMULATOR_MAX == LIVE_SETTLEMENTS_MAX * BILL_TOTAL_MAX_FEN < 2**53
    with pytest.raises(InvariantViolation, match="would pass"):
        add({"fund.basic": ACCUMULATOR_MAX}, {"fund.basic": 1})
    with pytest.raises(InvariantViolation, match="negative"):
        add({}, {"fund.basic": -1})
    assert Contribution("S1", {}).stay is None
