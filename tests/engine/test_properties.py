"""Property tests of the split's invariants over generated bills, persons, states and institutions,
settled with the shipped policies of all four cities and with the constructs file
(examples/cases/policies/999800-breadth.toml: one employee tier per construct), at institutions of every
level 0-8 and with catalog entries in a group that has its own ratio."""

from __future__ import annotations

import dataclasses
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.engine import Split, split
from gateway.engine.model import Bill, BillLine, Catalog, PersonState, Scheme, VisitType
from gateway.engine.policy import Band, CapOn, Policy

from .builders import CQ, JN, ON, YC, ZY, catalog, entry, institution, person, policy
from .test_golden_breadth import BR, breadth

REGIONS = {CQ: "500107", YC: "320902", ZY: "512002", JN: "370102", BR: "999801"}
PROFILES = [  # (scheme, tier by region, person type, tags)
    ("employee", {CQ: 1, YC: 1, ZY: 1, JN: 1, BR: 0}, "in_service", frozenset[str]()),
    ("employee", {CQ: 1, YC: 1, ZY: 2, JN: 1, BR: 0}, "retiree", frozenset({"civil_servant"})),
    ("employee", {CQ: 1, YC: 1, ZY: 1, JN: 1, BR: 0}, "migrant_worker", frozenset[str]()),
    ("resident", {CQ: 2, YC: 1, ZY: 3, JN: 1}, "adult", frozenset({"low_income"})),
    ("resident", {CQ: 1, YC: 1, ZY: 4, JN: 1}, "child", frozenset[str]()),
]  # BR: 0 means any of its tiers 1-8 (one construct each)
VISITS = [VisitType.OUTPATIENT, VisitType.INPATIENT, VisitType.SPECIAL, VisitType.PHARMACY]
ACC_KEYS = [
    "ded.inpatient",
    "ded.outpatient",
    "stays.inpatient",
    "fund.basic",
    "cost.basic",
    "fund.outpatient",
    "cost.outpatient",
    "fund.large",
    "base.large",
    "fund.critical",
    "base.critical",
    "fund.assistance",
    "base.assistance",
    "fund.relief",
    "base.relief",
    "fund.migrant_critical",
    "base.migrant_critical",
    "fund.civil_servant",
    "base.civil_servant",
    "fund.supplementary",
    "base.supplementary",
    "fund.copay_aid",
    "base.copay_aid",
]


@st.composite
def catalogs(draw: st.DrawFn, region: str) -> Catalog:
    entries = []
    for i in range(draw(st.integers(1, 8))):
        cls = draw(st.sampled_from("AABBC"))
        entries.append(
            entry(
                f"X{i}",
                cls,
                draw(st.sampled_from(["drug", "item", "material", "facility"])),
                selfpay_bp=draw(st.none() | st.integers(0, 10_000)),
                price_limit_fen=draw(st.none() | st.integers(1, 500_000)),
                quantity_per_visit_max=draw(st.none() | st.integers(1, 4)),
                group=draw(st.sampled_from(["", "", "implant_imported"])),
            )
        )
    return catalog(region, *entries)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Bill, Policy, Catalog, object, object, PersonState]:
    region = draw(st.sampled_from(sorted(REGIONS)))
    scheme, tiers, ptype, tags = draw(st.sampled_from([p for p in PROFILES if region in p[1]]))
    district = REGIONS[region]
    tier = tiers[region] or draw(st.integers(1, 8))
    who = person(
        region,
        district,
        scheme,
        ((tier, date(2020, 1, 1)),),
        ptype,
        draw(st.sampled_from([date(1960, 5, 5), date(1950, 1, 1), date(1990, 7, 1)])),
        tags=tags,
        diseases=("M001",),
    )
    visit = VisitType.INPATIENT if region == BR else draw(st.sampled_from(VISITS))
    level = 0 if visit is VisitType.PHARMACY else draw(st.integers(0, 8))
    kind = "pharmacy" if visit is VisitType.PHARMACY else "hospital"
    where = draw(st.sampled_from([region, region, region, *(r for r in REGIONS if r != BR)]))
    inst = institution(
        where,
        REGIONS[where]
        if where != region
        else draw(st.sampled_from([district, "500101", "500103"] if region == CQ else [district])),
        level,
        kind,
    )
    cat = draw(catalogs(where))
    codes = sorted(cat.periods)
    lines = tuple(
        BillLine(
            draw(st.sampled_from(codes)), draw(st.integers(0, 3_000_000)), draw(st.integers(1, 5)), i + 1
        )
        for i in range(draw(st.integers(1, 12)))
    )
    b = Bill(
        visit,
        lines,
        disease_code="M001" if visit is VisitType.SPECIAL else None,
        use_account=draw(st.booleans()),
    )
    acc = {k: draw(st.integers(0, 30_000_000)) for k in draw(st.sets(st.sampled_from(ACC_KEYS)))}
    if "stays.inpatient" in acc:
        acc["stays.inpatient"] %= 8
    s = PersonState(draw(st.integers(0, 2_000_000)), ON.year, acc)
    return b, breadth() if region == BR else policy(region), cat, inst, who, s


def run(case: tuple[Bill, Policy, Catalog, object, object, PersonState]) -> Split | None:
    b, pol, cat, inst, who, s = case
    result = split(b, pol, cat, inst, who, s, ON)  # type: ignore[arg-type]
    return result if isinstance(result, Split) else None


def caps(pol: Policy, s: Split) -> dict[str, int]:
    """fund (or eligible-cost) accumulator key -> annual maximum, in the plan the split used."""
    plan = pol.plans[(Scheme(s.scheme), s.tier)]
    out: dict[str, int] = {}
    for benefit in plan.benefits.values():
        basic = benefit.basic
        if basic is not None and basic.annual_max_fen is not None:
            key = basic.fund_key if basic.annual_max_on is CapOn.FUND else basic.cost_key
            out[key] = min(out.get(key, basic.annual_max_fen), basic.annual_max_fen)
    for layer in plan.layers:
        if layer.annual_max_fen is not None:
            out[layer.fund_key] = layer.annual_max_fen
    return out


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cases())
def test_parts_add_up_exactly_and_nothing_is_negative(case) -> None:  # type: ignore[no-untyped-def]
    s = run(case)
    if s is None:
        return
    for line in s.lines:
        parts = [line.full_selfpay_fen, line.over_limit_fen, line.first_selfpay_fen, line.in_scope_fen]
        assert sum(parts) == line.amount_fen and min(parts) >= 0
    assert s.total_fen == sum(line.amount_fen for line in s.lines)
    assert s.fund_total_fen == sum(f.amount_fen for f in s.funds)
    assert s.fund_total_fen + s.account_fen + s.cash_fen == s.total_fen
    assert min(s.fund_total_fen, s.account_fen, s.cash_fen, s.deductible_fen) >= 0
    assert all(f.amount_fen >= 0 for f in s.funds)
    # a layer may include the class-B first self-pay in its base (construct 3), nothing else beyond scope
    assert s.fund_total_fen <= s.in_scope_fen + s.first_selfpay_fen
    if s.basic_over_cap_fen:
        basic = next(f.amount_fen for f in s.funds if f.layer == "basic")
        assert s.basic_uncapped_fen == basic + s.basic_over_cap_fen
    assert s.account_fen <= case[5].account_balance_fen


@SETTINGS
@given(cases())
def test_no_layer_pays_beyond_its_remaining_annual_maximum(case) -> None:  # type: ignore[no-untyped-def]
    s = run(case)
    if s is None:
        return
    before = case[5].accumulators
    for key, cap in caps(case[1], s).items():
        if key in s.deltas:
            assert before.get(key, 0) + s.deltas[key] <= max(cap, before.get(key, 0)), key


def with_ratio_raised(pol: Policy, add_bp: int) -> Policy:
    plans = {}
    for key, plan in pol.plans.items():
        benefits = {}
        for visit, benefit in plan.benefits.items():
            basic = benefit.basic
            if basic is not None:
                bands = tuple(Band(b.upto_fen, b.ratio_bp + add_bp) for b in basic.ratio.bands)
                basic = dataclasses.replace(basic, ratio=dataclasses.replace(basic.ratio, bands=bands))
            benefits[visit] = dataclasses.replace(benefit, basic=basic)
        plans[key] = dataclasses.replace(plan, benefits=benefits)
    return dataclasses.replace(pol, plans=plans)


@SETTINGS
@given(cases(), st.integers(1, 3_000))
def test_raising_a_ratio_never_lowers_the_fund_payment(case, add_bp: int) -> None:  # type: ignore[no-untyped-def]
    low = run(case)
    if low is None:
        return
    high = run((case[0], with_ratio_raised(case[1], add_bp), *case[2:]))
    assert high is not None
    low_basic = sum(f.amount_fen for f in low.funds if f.layer == "basic")
    high_basic = sum(f.amount_fen for f in high.funds if f.layer == "basic")
    assert high_basic >= low_basic
    assert high.fund_total_fen >= low.fund_total_fen


def carried(s: PersonState, deltas: dict[str, int]) -> PersonState:
    acc = dict(s.accumulators)
    for key, value in deltas.items():
        acc[key] = acc.get(key, 0) + value
    return PersonState(s.account_balance_fen, s.year, acc)


@SETTINGS
@given(cases(), st.integers(1, 11))
def test_two_settlements_in_sequence_never_pay_more_than_the_combined_bill(case, cut: int) -> None:  # type: ignore[no-untyped-def]
    """For care whose limits are yearly (outpatient deductible met across visits, annual maxima), splitting
    a bill in two never pays more than settling it whole. Per-visit rules (per-stay deductibles,
    quantity per visit) legitimately treat two visits as two, so they are taken out here."""
    b, pol, cat, inst, who, s = case
    if len(b.lines) < 2 or b.visit_type is VisitType.INPATIENT:
        return
    cat = dataclasses.replace(
        cat,
        periods={
            k: tuple(dataclasses.replace(e, quantity_per_visit_max=None) for e in found)
            for k, found in cat.periods.items()
        },
    )
    case = (b, pol, cat, inst, who, s)
    cut = 1 + cut % (len(b.lines) - 1)
    combined = run(case)
    first = run((dataclasses.replace(b, lines=b.lines[:cut]), pol, cat, inst, who, s))
    if combined is None or first is None:
        return
    second = run(
        (dataclasses.replace(b, lines=b.lines[cut:]), pol, cat, inst, who, carried(s, dict(first.deltas)))
    )
    assert second is not None
    # Each bill rounds each layer once, half-up: allow one fen per paying layer per bill.
    slack = len(first.funds) + len(second.funds)
    assert first.fund_total_fen + second.fund_total_fen <= combined.fund_total_fen + slack
    # and the caps hold over the sequence
    after = carried(carried(s, dict(first.deltas)), dict(second.deltas)).accumulators
    for key, cap in caps(pol, combined).items():
        assert after.get(key, 0) <= max(cap, s.accumulators.get(key, 0)), key


@SETTINGS
@given(cases())
def test_a_cost_maximum_that_counts_the_deductible_holds_both_together(case) -> None:  # type: ignore[no-untyped-def]
    """Construct 2: the eligible cost and the deductibles of the year together never pass the maximum
    (unless they had already passed it before this bill)."""
    s = run(case)
    if s is None or case[1] is not breadth() or s.tier != 2:
        return
    before = case[5].accumulators
    used_before = before.get("cost.basic", 0) + before.get("ded.inpatient", 0)
    used_after = used_before + s.deltas.get("cost.basic", 0) + s.deltas.get("ded.inpatient", 0)
    cost_delta = s.deltas.get("cost.basic", 0)
    assert cost_delta == 0 or used_after <= max(2_000_000, used_before + s.deductible_fen)


@SETTINGS
@given(cases())
def test_grouped_lines_never_pay_above_their_fixed_ratio(case) -> None:  # type: ignore[no-untyped-def]
    """Construct 4: with a fixed ratio for a group, the basic fund never pays more than the ratio of
    every line's in-scope cost at the highest ratio that applies to it."""
    s = run(case)
    if s is None or case[1] is not breadth() or s.tier != 4:
        return
    cat = case[2]
    ceiling = 0
    for line in s.lines:
        e = cat.periods[line.code][0]
        ratio = 5000 if e.group == "implant_imported" else 6000 if e.kind.value == "facility" else 8000
        ceiling += line.in_scope_fen * ratio
    basic = sum(f.amount_fen for f in s.funds if f.layer == "basic")
    assert basic * 10_000 <= ceiling + 5_000


def without_audit(pol: Policy) -> Policy:
    return dataclasses.replace(pol, audit=None)


@SETTINGS
@given(cases(), st.sampled_from(["", "DUPLICATE"]))
def test_audit_flags_never_change_money(case, duplicate: str) -> None:  # type: ignore[no-untyped-def]
    """Audit rules (the breadth file's, which flag duplicates of every item) either block the bill or
    flag it: a settled bill pays exactly what it pays without the rules, and every flag names a line of
    the bill with an amount no larger than the line's."""
    b, pol, cat, inst, who, s = case
    if duplicate and b.lines:  # charge the first line twice, so the duplicate rule has something to find
        first = b.lines[0]
        b = dataclasses.replace(
            b, lines=(*b.lines, BillLine(first.code, first.unit_price_fen, first.quantity, 99))
        )
    with_rules = split(b, pol, cat, inst, who, s, ON)  # type: ignore[arg-type]
    plain = split(b, without_audit(pol), cat, inst, who, s, ON)  # type: ignore[arg-type]
    if not isinstance(with_rules, Split):
        return
    assert isinstance(plain, Split)
    assert (with_rules.funds, with_rules.account_fen, with_rules.cash_fen, with_rules.deltas) == (
        plain.funds, plain.account_fen, plain.cash_fen, plain.deltas,
    )  # fmt: skip
    amounts = {line.line_no: line.unit_price_fen * line.quantity for line in b.lines}
    for flag in with_rules.audit_flags:
        assert 0 <= flag.amount_fen <= amounts[flag.line_no]
    if duplicate and pol.audit is not None and b.visit_type in (VisitType.OUTPATIENT, VisitType.INPATIENT):
        assert any(f.rule_id == "DUP-01" and f.line_no == 99 for f in with_rules.audit_flags)
