"""The settlement engine's one entry point. A pure function: everything it needs comes in as arguments,
everything that must change comes out as a value (the split and the accumulator deltas). No I/O, no
clock, no randomness, no logging."""

from __future__ import annotations

from datetime import date

from gateway.engine.cascade import Visit, run_cascade
from gateway.engine.codes import Rejection
from gateway.engine.eligibility import enrolment_in_force, has_approval, penalty_for, tier_in_force
from gateway.engine.lines import LineContext, split_line
from gateway.engine.model import (
    Bill,
    Catalog,
    EnrolmentStatus,
    Institution,
    Person,
    PersonState,
    VisitType,
)
from gateway.engine.money import InvariantViolation, require
from gateway.engine.policy import Benefit, Plan, Policy
from gateway.engine.result import FundPayment, LineSplit, Rejected, Split, SplitOutcome, TraceStep


def split(
    bill: Bill,
    policy: Policy,
    catalog: Catalog,
    institution: Institution,
    person: Person,
    state: PersonState,
    on: date,
) -> SplitOutcome:
    """Who pays what for `bill`, at `institution`, for `person` with `state`, on the date of care `on`.

    `policy` is the insured region's, `catalog` the place of treatment's (就医地目录、参保地政策)."""
    require(catalog.region == institution.region, "the catalog must be the place of treatment's")
    enrolment = enrolment_in_force(person, policy.region, on)
    if enrolment is None:
        return Rejected(Rejection.NOT_ENROLLED, f"no enrolment in region {policy.region} on {on}")
    if enrolment.status is EnrolmentStatus.SUSPENDED:
        return Rejected(Rejection.ENROLMENT_SUSPENDED, "enrolment suspended (contributions in arrears)")
    if not policy.in_force(on):
        return Rejected(Rejection.POLICY_NOT_IN_FORCE, f"policy {policy.version} not in force on {on}")
    if not institution.designated:
        return Rejected(
            Rejection.INSTITUTION_NOT_DESIGNATED,
            f"{institution.code} is not designated: pay in full and claim later",
        )
    if bill.visit_type not in institution.visit_types:
        return Rejected(
            Rejection.VISIT_TYPE_NOT_AGREED, f"{institution.code} may not settle {bill.visit_type} care"
        )
    tier = tier_in_force(enrolment, policy.tier_switch, on)
    plan = policy.plans.get((enrolment.scheme, tier)) if tier is not None else None
    if tier is None or plan is None:
        return Rejected(Rejection.NO_PLAN, f"no plan for {enrolment.scheme} tier {tier}")
    benefit = plan.benefits.get(bill.visit_type)
    if benefit is None:
        return Rejected(
            Rejection.VISIT_TYPE_NOT_COVERED,
            f"{enrolment.scheme} tier {tier} has no {bill.visit_type} benefit",
        )
    cross_region = institution.region != enrolment.region
    out_rule = policy.out_of_region
    if (
        cross_region
        and out_rule is not None
        and out_rule.reject_unfiled
        and not has_approval(person, out_rule.approval_kinds, on, institution.code)
    ):
        return Rejected(Rejection.OUT_OF_REGION_NOT_FILED, "out-of-region care needs a filing or referral")

    registered = frozenset(r.code for r in person.special_diseases if r.in_force(on))
    if benefit.requires_registration:
        if not bill.disease_code:
            return Rejected(Rejection.DISEASE_CODE_MISSING, "special-disease visit without disease_code")
        if bill.disease_code not in registered:
            return Rejected(
                Rejection.SPECIAL_DISEASE_NOT_REGISTERED, f"{bill.disease_code} is not registered"
            )

    age = person.age_on(on)
    ctx = LineContext(
        on,
        enrolment.scheme,
        bill.visit_type,
        institution.level,
        person.sex,
        age,
        registered,
        plan.first_selfpay_bp,
    )
    lines: list[LineSplit] = []
    used: dict[str, int] = {}
    entries = catalog.entries
    for line in bill.lines:
        entry = entries.get(line.code)
        if entry is None:
            return Rejected(
                Rejection.UNKNOWN_ITEM,
                f"line {line.line_no}: {line.code} is not in catalog {catalog.version}",
                line.line_no,
            )
        before = used.get(line.code, 0)
        lines.append(split_line(line, entry, ctx, before))
        used[line.code] = before + line.quantity

    penalty, penalty_flag = penalty_for(policy, person, enrolment, institution, bill.visit_type, on)
    flags: list[str] = []
    if cross_region:
        flags.append("CROSS_REGION")
    if penalty_flag is not None:
        flags.append(penalty_flag)
    trace: list[TraceStep] = []
    deltas: dict[str, int] = {}
    in_scope = sum(line.in_scope_fen for line in lines)
    visit = Visit(
        bill.visit_type, institution.level, enrolment.person_type, age, person.tags, on.year, penalty
    )

    deductible = 0
    funds: list[FundPayment] = []
    if bill.visit_type is VisitType.MATERNITY:
        outcome = pay_lump_sum(benefit, bill, institution.level, in_scope, deltas, trace)
        if isinstance(outcome, Rejected):
            return outcome
        funds.append(outcome)
    elif benefit.basic is not None:
        deductible, funds = run_cascade(benefit.basic, plan.layers, visit, state, in_scope, deltas, trace)

    return finish(policy, catalog, plan, benefit, bill, state, lines, deductible, funds, deltas, trace, flags)


def pay_lump_sum(
    benefit: Benefit,
    bill: Bill,
    level: int,
    in_scope: int,
    deltas: dict[str, int],
    trace: list[TraceStep],
) -> FundPayment | Rejected:
    by_level = benefit.lump_sums_fen.get(bill.maternity_event or "")
    if by_level is None:
        return Rejected(Rejection.MATERNITY_EVENT_UNKNOWN, f"no lump sum for event {bill.maternity_event!r}")
    lump = by_level[level]
    payment = min(lump, in_scope)
    trace.append(TraceStep("maternity.lump_sum", f"{bill.maternity_event} level {level}: {lump}", payment))
    deltas[benefit.lump_sum_key] = deltas.get(benefit.lump_sum_key, 0) + payment
    return FundPayment("maternity", benefit.lump_sum_fund_code, payment, None)


def finish(
    policy: Policy,
    catalog: Catalog,
    plan: Plan,
    benefit: Benefit,
    bill: Bill,
    state: PersonState,
    lines: list[LineSplit],
    deductible: int,
    funds: list[FundPayment],
    deltas: dict[str, int],
    trace: list[TraceStep],
    flags: list[str],
) -> Split:
    total = full = over = first = in_scope = 0
    for line in lines:
        total += line.amount_fen
        full += line.full_selfpay_fen
        over += line.over_limit_fen
        first += line.first_selfpay_fen
        in_scope += line.in_scope_fen
    fund_total = sum(f.amount_fen for f in funds)
    person_share = total - fund_total

    account = 0
    balance = state.account_balance_fen
    if benefit.account_allowed and bill.use_account and balance > 0:
        eligible = person_share
        if benefit.account_excludes_full_selfpay:
            eligible -= full
        if benefit.account_excludes_over_limit:
            eligible -= over
        account = min(balance, max(0, eligible))
        trace.append(TraceStep("account", f"balance {balance}, eligible {max(0, eligible)}", account))
    cash = person_share - account
    funds_out = tuple(f for f in funds if f.amount_fen or f.remaining_max_fen is not None)

    result = Split(
        policy_version=policy.version,
        catalog_version=catalog.version,
        scheme=str(plan.scheme),
        tier=plan.tier,
        lines=tuple(lines),
        total_fen=total,
        full_selfpay_fen=full,
        over_limit_fen=over,
        first_selfpay_fen=first,
        in_scope_fen=in_scope,
        deductible_fen=deductible,
        funds=funds_out,
        fund_total_fen=fund_total,
        person_share_fen=person_share,
        account_fen=account,
        cash_fen=cash,
        account_balance_after_fen=balance - account,
        deltas={k: v for k, v in deltas.items() if v},
        trace=tuple(trace),
        flags=tuple(flags),
    )
    check_invariants(result, state)
    return result


def check_invariants(s: Split, state: PersonState) -> None:
    """Fails loudly (InvariantViolation) when a split does not add up; never removed by `python -O`.
    Messages are built only on failure: this runs on every settlement."""
    for line in s.lines:
        f, o, p, i = line.full_selfpay_fen, line.over_limit_fen, line.first_selfpay_fen, line.in_scope_fen
        if f < 0 or o < 0 or p < 0 or i < 0 or f + o + p + i != line.amount_fen:
            raise InvariantViolation(f"line {line.line_no}: parts {(f, o, p, i)} vs amount {line.amount_fen}")
    if s.full_selfpay_fen + s.over_limit_fen + s.first_selfpay_fen + s.in_scope_fen != s.total_fen:
        raise InvariantViolation("line parts do not add up to the total")
    for fund in s.funds:
        if fund.amount_fen < 0 or (fund.remaining_max_fen is not None and fund.remaining_max_fen < 0):
            raise InvariantViolation(f"{fund.layer}: negative payment or beyond its annual maximum")
    if s.fund_total_fen > s.in_scope_fen or s.deductible_fen > s.in_scope_fen:
        raise InvariantViolation("funds or deductible above the in-scope amount")
    if s.fund_total_fen + s.account_fen + s.cash_fen != s.total_fen:
        raise InvariantViolation("fund + account + cash != total")
    if s.account_fen < 0 or s.cash_fen < 0 or s.account_fen > state.account_balance_fen:
        raise InvariantViolation("account or cash payment negative, or account above its balance")
    for value in s.deltas.values():
        if value < 0:
            raise InvariantViolation("a negative accumulator delta")
