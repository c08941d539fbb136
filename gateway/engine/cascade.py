"""Bill level: deductible, the basic pooled fund, then the supplementary layers, on the bill's in-scope
total S.

After the basic layer the person's in-scope burden is three parts:
    deductible D  +  co-payment P (the share of covered cost the ratio leaves)  +  excess X (cost above
    the basic layer's annual maximum).
A supplementary layer's base is X (unless its policy excludes it), plus D, P and the class-B first
self-pay F when its policy includes them. What a layer pays reduces the parts it drew on, X first, then
P, then F, then D, so the next layer sees what is left.

Rounding: each layer's payment is one sum of (fen x basis points) products over its bands, rounded once,
half-up (money.round_bp_sum)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from gateway.engine.model import PersonState, PersonType, StayTotals, VisitType
from gateway.engine.money import BP_ONE, InvariantViolation, apply_bp, clamp_bp, round_bp_sum
from gateway.engine.policy import (
    Band,
    BandScope,
    BasicLayer,
    CapOn,
    Deductible,
    DeductibleScope,
    Penalty,
    Ratio,
    RatioMeasure,
    StayRule,
    SupplementaryLayer,
)
from gateway.engine.result import FundPayment, TraceStep


class Visit(NamedTuple):
    """The facts about this visit the cascade depends on."""

    visit_type: VisitType
    level: int
    person_type: PersonType
    age: int
    tags: frozenset[str]
    year: int
    penalty: Penalty | None


@dataclass(slots=True)
class Burden:
    """The in-scope burden left to the person, by part. Mutated as layers pay."""

    deductible: int
    copay: int
    excess: int
    first_selfpay: int = 0


class BasicOutcome(NamedTuple):
    payment: FundPayment
    copay: int
    excess: int
    uncapped_fen: int  # what the ratio pays on the whole eligible cost, before the annual maximum


class CascadeResult(NamedTuple):
    deductible: int
    funds: list[FundPayment]
    counted: int  # the stay number this bill gives its stay when it is the first part that counts
    uncapped_fen: int  # the basic fund's payment before its annual maximum


def segments(bands: tuple[Band, ...], start: int, length: int) -> Iterator[tuple[int, int]]:
    """(cost, ratio) pieces of the slice [start, start + length) of a banded base."""
    end = start + length
    lower = 0
    for band in bands:
        upper = end if band.upto_fen is None else band.upto_fen
        lo, hi = max(lower, start), min(upper, end)
        if hi > lo:
            yield hi - lo, band.ratio_bp
        if band.upto_fen is None or upper >= end:
            return
        lower = upper


def stay_number(rule: Deductible, visit: Visit, state: PersonState, stay: StayTotals) -> int:
    """The stay's number in the plan-year: fixed by the part that first counted it, else the next one."""
    if stay.stay_no:
        return stay.stay_no
    return state.acc(rule.stays_key, visit.year) + 1 if rule.stays_key is not None else 1


def deductible_standard(
    rule: Deductible, visit: Visit, state: PersonState, stay: StayTotals, trace: list[TraceStep]
) -> int:
    standard = rule.by_level_fen[visit.level]
    trace.append(TraceStep("deductible.level", f"level {visit.level} standard", standard))
    person_rule = next((p for p in rule.person_rules if p.matches(visit.person_type, visit.age)), None)
    multiplier = rule.person_type_bp.get(visit.person_type)
    if person_rule is not None:
        if person_rule.standard_fen is not None:
            standard = person_rule.standard_fen
        if person_rule.multiplier_bp is not None:
            standard = apply_bp(standard, person_rule.multiplier_bp)
        trace.append(TraceStep("deductible.person_rule", f"{visit.person_type} age {visit.age}", standard))
    elif multiplier is not None:
        standard = apply_bp(standard, multiplier)
        trace.append(TraceStep("deductible.person_type", f"{visit.person_type} x{multiplier}bp", standard))
    if rule.stays_key is not None and rule.stay_rule is not StayRule.NONE:
        stay_no = stay_number(rule, visit, state, stay)
        if rule.stay_rule is StayRule.REDUCE and stay_no > 1:
            reduced = standard - apply_bp(standard, rule.reduce_each_stay_bp * (stay_no - 1))
            floor = rule.floor(visit.level)
            standard = max(floor, reduced, 0) if standard > floor else standard
        elif rule.stay_rule is StayRule.HALF_THEN_NONE and stay_no > 1:
            standard = apply_bp(standard, BP_ONE // 2) if stay_no == 2 else 0
        trace.append(TraceStep("deductible.stay_rule", f"{rule.stay_rule} stay {stay_no}", standard))
    if visit.penalty is not None:
        standard = apply_bp(standard, visit.penalty.deductible_bp)
        trace.append(TraceStep("deductible.penalty", f"x{visit.penalty.deductible_bp}bp", standard))
    return standard


def deductible_due(
    rule: Deductible,
    visit: Visit,
    state: PersonState,
    stay: StayTotals,
    in_scope: int,
    trace: list[TraceStep],
) -> int:
    standard = deductible_standard(rule, visit, state, stay, trace)
    paid_this_year = state.acc(rule.key, visit.year)
    due = standard
    if stay.deductible_fen:  # earlier parts of this stay paid part of its one deductible
        due = max(0, standard - stay.deductible_fen)
        trace.append(TraceStep("deductible.stay", f"earlier parts paid {stay.deductible_fen}", due))
    if rule.scope is DeductibleScope.YEAR:
        due = max(0, standard - paid_this_year)
        trace.append(TraceStep("deductible.year", f"already met {paid_this_year}", due))
    if rule.yearly_cap_fen is not None:
        due = min(due, max(0, rule.yearly_cap_fen - paid_this_year))
        trace.append(TraceStep("deductible.yearly_cap", f"cap {rule.yearly_cap_fen}", due))
    deductible = min(in_scope, due)
    trace.append(TraceStep("deductible.paid", "min(in scope, due)", deductible))
    return deductible


def adjusted_bands(ratio: Ratio, visit: Visit, trace: list[TraceStep]) -> tuple[Band, ...]:
    """The ratio bands with this visit's adjustments (level, person type, age, penalty) added."""
    adjust = ratio.level_add_bp.get(visit.level, 0) + ratio.person_type_add_bp.get(visit.person_type, 0)
    bonus = ratio.age_bonus
    if bonus is not None and visit.age > bonus.from_age:
        adjust += min(bonus.max_bp, (visit.age - bonus.from_age) * bonus.bp_per_year)
    person_rule = next((p for p in ratio.person_rules if p.matches(visit.person_type, visit.age)), None)
    if person_rule is not None:
        adjust += person_rule.add_bp
    if visit.penalty is not None:
        adjust -= visit.penalty.ratio_minus_bp
    bands = tuple(Band(b.upto_fen, clamp_bp(b.ratio_bp + adjust)) for b in ratio.bands)
    trace.append(
        TraceStep("basic.ratio", " ".join(f"{b.upto_fen or 'rest'}:{b.ratio_bp}bp" for b in bands), 0)
    )
    return bands


def pay_basic(
    layer: BasicLayer,
    visit: Visit,
    state: PersonState,
    stay: StayTotals,
    deductible: int,
    ordinary: int,
    grouped: tuple[tuple[int, int], ...],
    deltas: dict[str, int],
    trace: list[TraceStep],
) -> BasicOutcome:
    """`ordinary`: the eligible cost the bands apply to; `grouped`: (eligible cost, fund ratio) of the
    lines whose group or kind has a fixed ratio. Returns the payment, the co-payment, the excess over
    the annual maximum and the payment before the maximum."""
    bands = adjusted_bands(layer.ratio, visit, trace)
    minus = visit.penalty.ratio_minus_bp if visit.penalty is not None else 0
    cost_before = state.acc(layer.cost_key, visit.year)
    fund_before = state.acc(layer.fund_key, visit.year)
    ded_before = state.acc(layer.deductible.key, visit.year) if layer.deductible is not None else 0
    cap = layer.annual_max_fen
    eligible = ordinary + sum(cost for cost, _ in grouped)

    covered = eligible
    if cap is not None and layer.annual_max_on is CapOn.COST:
        used = cost_before
        if layer.annual_max_counts_deductible:
            used += ded_before + deductible  # the deductible fills the maximum first
        covered = min(eligible, max(0, cap - used))
        trace.append(TraceStep("basic.cost_cap", f"eligible cost left {max(0, cap - used)}", covered))
    # bill-scope bands are measured on this stay (its earlier parts first), year-scope on the year;
    # measured on the in-scope cost, the deductible (this bill's and what came before) fills the first slice
    year_bands = layer.ratio.bands_scope is BandScope.YEAR
    start = cost_before if year_bands else stay.eligible_fen
    if layer.ratio.measured_on is RatioMeasure.IN_SCOPE:
        start += deductible + (ded_before if year_bands else stay.deductible_fen)
    pieces = list(segments(bands, start, ordinary))
    pieces += [(cost, clamp_bp(ratio - minus)) for cost, ratio in grouped if cost]
    uncapped = round_bp_sum(sum(cost * ratio for cost, ratio in pieces))
    if covered < eligible:
        pieces = truncated(pieces, covered)
    payment = round_bp_sum(sum(cost * ratio for cost, ratio in pieces))
    trace.append(TraceStep("basic.ratio_applied", f"on {covered}", payment))

    if cap is not None and layer.annual_max_on is CapOn.FUND:
        room = max(0, cap - fund_before)
        if payment > room:
            covered = cost_covered_by(pieces, room)
            payment = room
            trace.append(TraceStep("basic.fund_cap", f"fund left {room}", payment))

    deltas[layer.cost_key] = deltas.get(layer.cost_key, 0) + (
        covered if layer.annual_max_on is CapOn.COST else eligible
    )
    deltas[layer.fund_key] = deltas.get(layer.fund_key, 0) + payment
    remaining = None
    if cap is not None:
        used_after = (cost_before + covered) if layer.annual_max_on is CapOn.COST else fund_before + payment
        if layer.annual_max_on is CapOn.COST and layer.annual_max_counts_deductible:
            used_after += ded_before + deductible
        remaining = max(0, cap - used_after)
    fund = FundPayment(layer.name, layer.fund_code, payment, remaining)
    return BasicOutcome(fund, covered - payment, eligible - covered, uncapped)


def truncated(pieces: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The first `length` fen of cost of the pieces, in order."""
    out = []
    for cost, ratio in pieces:
        if length <= 0:
            break
        out.append((min(cost, length), ratio))
        length -= cost
    return out


def cost_covered_by(pieces: list[tuple[int, int]], payment_fen: int) -> int:
    """The cost, walking the pieces in order, whose payment reaches `payment_fen` (the fund's cap)."""
    target = payment_fen * BP_ONE
    paid = 0
    covered = 0
    for cost, ratio in pieces:
        if paid + cost * ratio <= target:
            paid += cost * ratio
            covered += cost
            continue
        covered += (target - paid) // ratio
        break
    return covered


def layer_applies(layer: SupplementaryLayer, visit: Visit) -> bool:
    return (
        visit.visit_type in layer.visit_types
        and (not layer.person_types or visit.person_type in layer.person_types)
        and (not layer.person_tags or bool(layer.person_tags & visit.tags))
    )


def pay_layer(
    layer: SupplementaryLayer,
    visit: Visit,
    state: PersonState,
    burden: Burden,
    deltas: dict[str, int],
    trace: list[TraceStep],
) -> FundPayment:
    base = burden.excess if layer.include_excess else 0
    if layer.include_deductible:
        base += burden.deductible
    if layer.include_copay:
        base += burden.copay
    if layer.include_first_selfpay:
        base += burden.first_selfpay
    base_before = state.acc(layer.base_key, visit.year)
    bands = layer.bands
    add = layer.level_add_bp.get(visit.level, 0)
    if add:
        bands = tuple(Band(b.upto_fen, clamp_bp(b.ratio_bp + add) if b.ratio_bp else 0) for b in bands)
    payment = round_bp_sum(sum(c * r for c, r in segments(bands, base_before, base)))
    trace.append(TraceStep(f"{layer.name}.bands", f"base {base} after {base_before} this year", payment))
    remaining = None
    if layer.annual_max_fen is not None:
        room = max(0, layer.annual_max_fen - state.acc(layer.fund_key, visit.year))
        if payment > room:
            payment = room
            trace.append(TraceStep(f"{layer.name}.cap", f"fund left {room}", payment))
        remaining = room - payment
    if payment > base:
        raise InvariantViolation(f"layer {layer.name} pays {payment} on a base of {base}")
    deltas[layer.base_key] = deltas.get(layer.base_key, 0) + base
    deltas[layer.fund_key] = deltas.get(layer.fund_key, 0) + payment

    left = payment  # reduce the parts it drew on: excess, co-payment, first self-pay, deductible
    if layer.include_excess:
        take = min(left, burden.excess)
        burden.excess -= take
        left -= take
    if layer.include_copay:
        take = min(left, burden.copay)
        burden.copay -= take
        left -= take
    if layer.include_first_selfpay:
        take = min(left, burden.first_selfpay)
        burden.first_selfpay -= take
        left -= take
    if layer.include_deductible:
        take = min(left, burden.deductible)
        burden.deductible -= take
        left -= take
    if left:
        raise InvariantViolation(f"layer {layer.name} paid {left} more than the parts it drew on")
    return FundPayment(layer.name, layer.fund_code, payment, remaining)


def run_cascade(
    basic: BasicLayer,
    layers: tuple[SupplementaryLayer, ...],
    visit: Visit,
    state: PersonState,
    stay: StayTotals,
    in_scope: int,
    deltas: dict[str, int],
    trace: list[TraceStep],
    first_selfpay: int = 0,
    grouped: tuple[tuple[int, int], ...] = (),
) -> CascadeResult:
    """`grouped`: (in-scope cost, fund ratio) of the lines with a fixed ratio for their group or kind;
    the deductible is taken from the other lines first, then from these in order.

    The stay number is the one this bill gives its stay when it is the first part that counts (0
    otherwise). A bill with nothing in scope never counts as a stay: two empty "stays" must not move a
    person on to a lower deductible."""
    deductible = 0
    counted = 0
    if basic.deductible is not None:
        rule = basic.deductible
        deductible = deductible_due(rule, visit, state, stay, in_scope, trace)
        deltas[rule.key] = deltas.get(rule.key, 0) + deductible
        if visit.visit_type is VisitType.INPATIENT and in_scope > 0 and not stay.stay_no:
            counted = stay_number(rule, visit, state, stay)
            if rule.stays_key is not None:
                deltas[rule.stays_key] = deltas.get(rule.stays_key, 0) + 1
    elif visit.visit_type is VisitType.INPATIENT and in_scope > 0 and not stay.stay_no:
        counted = 1
    ordinary = in_scope - sum(cost for cost, _ in grouped)
    left = deductible - min(deductible, ordinary)
    ordinary -= deductible - left
    eligible_groups = []
    for cost, ratio in grouped:
        take = min(left, cost)
        left -= take
        eligible_groups.append((cost - take, ratio))
    basic_out = pay_basic(
        basic, visit, state, stay, deductible, ordinary, tuple(eligible_groups), deltas, trace
    )
    funds = [basic_out.payment]
    burden = Burden(deductible, basic_out.copay, basic_out.excess, first_selfpay)
    for layer in layers:
        if layer_applies(layer, visit):
            funds.append(pay_layer(layer, visit, state, burden, deltas, trace))
    return CascadeResult(deductible, funds, counted, basic_out.uncapped_fen)
