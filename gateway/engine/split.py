"""The settlement engine's one entry point. A pure function: everything it needs comes in as arguments,
everything that must change comes out as a value (the split and the accumulator deltas). No I/O, no
clock, no randomness, no logging."""

from __future__ import annotations

import dataclasses
from datetime import date

from gateway.engine.audit_rules import AuditFlag, audit_bill, blocking_flag
from gateway.engine.cascade import Visit, run_cascade
from gateway.engine.codes import Rejection
from gateway.engine.eligibility import covered, penalty_for
from gateway.engine.lines import STAY_VISITS, LineContext, split_line
from gateway.engine.model import (
    NO_STAY,
    Bill,
    Catalog,
    Institution,
    Person,
    PersonState,
    StayTotals,
    VisitType,
)
from gateway.engine.money import InvariantViolation, require
from gateway.engine.policy import Benefit, DiseasePayment, Plan, Policy
from gateway.engine.result import FundPayment, LineSplit, Rejected, Split, SplitOutcome, TraceStep


def split(
    bill: Bill,
    policy: Policy,
    catalog: Catalog,
    institution: Institution,
    person: Person,
    state: PersonState,
    on: date,
    stay: StayTotals = NO_STAY,
) -> SplitOutcome:
    """Who pays what for `bill`, at `institution`, for `person` with `state`, on the date of care `on`.

    `policy` is the insured region's, `catalog` the place of treatment's (就医地目录、参保地政策).
    `state` holds the accumulators of the person's plan-year (insured region, scheme, year) and the
    personal account balance the bill may use; `stay` what the earlier live parts of the bill's stay
    add up to (an interim settlement's later parts continue its deductible, bands and quantities)."""
    require(catalog.region == institution.region, "the catalog must be the place of treatment's")
    found = covered(person, policy, institution, on, bill.visit_type)
    if isinstance(found, Rejected):
        return found
    enrolment, _, plan = found
    benefit = plan.benefits[bill.visit_type]
    cross_region = institution.region != enrolment.region

    if stay.closed:
        return Rejected(Rejection.STAY_CLOSED, f"stay {bill.stay_id} has a final settlement already")
    registered = frozenset(r.code for r in person.special_diseases if r.in_force(on))
    if benefit.requires_registration:
        if not bill.disease_code:
            return Rejected(Rejection.DISEASE_CODE_MISSING, "special-disease visit without disease_code")
        if bill.disease_code not in registered:
            return Rejected(
                Rejection.SPECIAL_DISEASE_NOT_REGISTERED, f"{bill.disease_code} is not registered"
            )

    age = person.age_on(on)
    audit_flags: tuple[AuditFlag, ...] = ()
    if policy.audit is not None:
        audit_flags = audit_bill(policy.audit, bill, on, person.sex, age)
        blocked = blocking_flag(policy.audit, audit_flags)
        if blocked is not None:
            return Rejected(
                Rejection.AUDIT_BLOCKED,
                f"audit rule {blocked.rule_id} ({blocked.severity}) on line {blocked.line_no}:"
                f" {blocked.detail}",
                blocked.line_no,
                audit_flags,
            )
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
    used: dict[str, int] = dict(stay.quantities)  # per-visit limits hold across a stay's parts
    ratio = benefit.basic.ratio if benefit.basic is not None else None
    fixed = ratio is not None and bool(ratio.group_fund_bp or ratio.kind_fund_bp)
    grouped: dict[int, int] = {}  # fixed fund ratio -> in-scope cost of the lines it applies to
    for line in bill.lines:
        entry = catalog.entry(line.code, line.service_on or on)
        if entry is None:
            return Rejected(
                Rejection.UNKNOWN_ITEM,
                f"line {line.line_no}: {line.code} is not in catalog {catalog.version}",
                line.line_no,
            )
        before = used.get(line.code, 0)
        lines.append(split_line(line, entry, ctx, before))
        used[line.code] = before + line.quantity
        if fixed and ratio is not None:
            line_ratio = ratio.line_ratio(entry.kind, entry.group)
            if line_ratio is not None:
                grouped[line_ratio] = grouped.get(line_ratio, 0) + lines[-1].in_scope_fen

    penalty, penalty_flag = penalty_for(policy, person, enrolment, institution, bill.visit_type, on)
    flags: list[str] = []
    if cross_region:
        flags.append("CROSS_REGION")
    if penalty_flag is not None:
        flags.append(penalty_flag)
    trace = [
        TraceStep(f"audit.{f.rule_id}", f"line {f.line_no}: {f.detail}", f.amount_fen) for f in audit_flags
    ]
    deltas: dict[str, int] = {}
    in_scope = sum(line.in_scope_fen for line in lines)
    visit = Visit(
        bill.visit_type, institution.level, enrolment.person_type, age, person.tags, on.year, penalty
    )

    deductible = 0
    counted = 0
    lump_paid = 0
    uncapped = 0
    institution_fen = 0
    disease: DiseasePayment | None = None
    funds: list[FundPayment] = []
    if bill.visit_type is VisitType.MATERNITY:
        outcome = pay_lump_sum(benefit, bill, institution.level, in_scope, state, stay, deltas, trace)
        if isinstance(outcome, Rejected):
            return outcome
        payment, counted = outcome
        lump_paid = payment.amount_fen
        funds.append(payment)
    elif (disease := per_disease_of(benefit, bill, stay)) is not None:
        payment, institution_fen = pay_per_disease(disease, lines, deltas, trace)
        funds.append(payment)
        flags.append("PER_DISEASE")
    elif benefit.basic is not None:
        first_selfpay = sum(line.first_selfpay_fen for line in lines)
        deductible, funds, counted, uncapped = run_cascade(
            benefit.basic,
            plan.layers,
            visit,
            state,
            stay,
            in_scope,
            deltas,
            trace,
            first_selfpay,
            tuple((cost, ratio) for ratio, cost in sorted(grouped.items(), reverse=True)),
        )
    part = None
    if bill.visit_type in STAY_VISITS:
        quantities: dict[str, int] = {}
        for line in bill.lines:
            quantities[line.code] = quantities.get(line.code, 0) + line.quantity
        part = StayTotals(
            1,
            counted,
            in_scope,
            in_scope - deductible,
            deductible,
            lump_paid,
            quantities,
            int(not bill.interim),
        )
    result = finish(
        policy,
        catalog,
        plan,
        benefit,
        bill,
        state,
        lines,
        deductible,
        funds,
        deltas,
        trace,
        flags,
        part,
        institution_fen,
        disease.name if disease is not None else "",
    )
    over_cap = uncapped - funds[0].amount_fen if benefit.basic is not None and funds else 0
    if over_cap > 0:  # published examples quote what the cap cut off; 0 when it cut nothing
        result = dataclasses.replace(result, basic_uncapped_fen=uncapped, basic_over_cap_fen=over_cap)
    if audit_flags:
        result = dataclasses.replace(result, audit_flags=audit_flags)
    return result


def per_disease_of(benefit: Benefit, bill: Bill, stay: StayTotals) -> DiseasePayment | None:
    """The per-disease rule for the bill's principal diagnosis. A stay settled in interim parts is
    settled fee-for-service: a fixed payment per stay cannot be split across parts."""
    if not benefit.per_disease or not bill.diagnoses or bill.interim or stay.parts:
        return None
    principal = bill.diagnoses[0]
    return next((d for d in benefit.per_disease if d.matches(principal)), None)


def pay_per_disease(
    disease: DiseasePayment, lines: list[LineSplit], deltas: dict[str, int], trace: list[TraceStep]
) -> tuple[FundPayment, int]:
    """The fund's fixed payment and what the institution bears (the person pays the rest)."""
    total = sum(line.amount_fen for line in lines)
    fund = disease.fund_fen
    if disease.personal_fen is not None:
        person = min(disease.personal_fen, total)
    else:
        person = min(disease.personal_max_fen or 0, max(0, total - fund))
    institution = total - fund - person
    deltas[disease.fund_key] = deltas.get(disease.fund_key, 0) + fund
    trace.append(TraceStep("per_disease.fund", f"{disease.name}: fixed payment", fund))
    trace.append(
        TraceStep("per_disease.person", "fixed" if disease.personal_fen is not None else "capped", person)
    )
    trace.append(TraceStep("per_disease.institution", "bill - fund - person", institution))
    return FundPayment("per_disease", disease.fund_code, fund, None), institution


def pay_lump_sum(
    benefit: Benefit,
    bill: Bill,
    level: int,
    in_scope: int,
    state: PersonState,
    stay: StayTotals,
    deltas: dict[str, int],
    trace: list[TraceStep],
) -> tuple[FundPayment, int] | Rejected:
    """The maternity lump sum: once per event as often a year as the policy allows (counted by the first
    part of the stay that has anything in scope), at most the stay's in-scope cost."""
    event = bill.maternity_event or ""
    by_level = benefit.lump_sums_fen.get(event)
    if by_level is None:
        return Rejected(Rejection.MATERNITY_EVENT_UNKNOWN, f"no lump sum for event {bill.maternity_event!r}")
    counter = benefit.lump_sum_count_key(event)
    counted = 0
    if not stay.stay_no and in_scope > 0:
        times = state.acc(counter, state.year)
        if times >= benefit.lump_sums_per_year:
            return Rejected(
                Rejection.MATERNITY_LUMP_SUM_USED,
                f"the {event} lump sum was paid {times} time(s) this plan-year (at most"
                f" {benefit.lump_sums_per_year})",
            )
        counted = times + 1
        deltas[counter] = deltas.get(counter, 0) + 1
    lump = by_level[level]
    payment = max(0, min(lump, stay.in_scope_fen + in_scope) - stay.lump_sum_fen)
    trace.append(TraceStep("maternity.lump_sum", f"{event} level {level}: {lump}", payment))
    deltas[benefit.lump_sum_key] = deltas.get(benefit.lump_sum_key, 0) + payment
    return FundPayment("maternity", benefit.lump_sum_fund_code, payment, None), counted


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
    stay: StayTotals | None = None,
    institution_fen: int = 0,
    per_disease: str = "",
) -> Split:
    total = full = over = first = in_scope = 0
    for line in lines:
        total += line.amount_fen
        full += line.full_selfpay_fen
        over += line.over_limit_fen
        first += line.first_selfpay_fen
        in_scope += line.in_scope_fen
    fund_total = sum(f.amount_fen for f in funds)
    person_share = total - fund_total - institution_fen

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
        stay=stay,
        per_disease=per_disease,
        institution_fen=institution_fen,
    )
    check_invariants(result, state)
    check_caps(plan, result, state)
    return result


def check_caps(plan: Plan, s: Split, state: PersonState) -> None:
    """Every capped counter of the plan (each fund's annual maximum, a maximum on eligible cost, a
    yearly deductible cap) holds after the bill, whichever layer or benefit moved it: a check of each
    fund's own remainder alone would miss two rules that share a counter."""
    for key, maximum in plan.caps:
        delta = s.deltas.get(key, 0)
        if delta and state.acc(key, state.year) + delta > maximum:
            raise InvariantViolation(
                f"{key}: {state.acc(key, state.year)} + {delta} exceeds its annual maximum {maximum}"
            )


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
    # a layer may include the class-B first self-pay in its base, never more; a per-disease payment is
    # fixed whatever the lines
    beyond = s.fund_total_fen > s.in_scope_fen + s.first_selfpay_fen and not s.per_disease
    if beyond or s.deductible_fen > s.in_scope_fen:
        raise InvariantViolation("funds or deductible above the in-scope amount")
    if s.fund_total_fen + s.account_fen + s.cash_fen + s.institution_fen != s.total_fen:
        raise InvariantViolation("fund + account + cash + institution share != total")
    if s.institution_fen and not s.per_disease:
        raise InvariantViolation("an institution share without a per-disease payment")
    if s.account_fen < 0 or s.cash_fen < 0 or s.account_fen > state.account_balance_fen:
        raise InvariantViolation("account or cash payment negative, or account above its balance")
    for value in s.deltas.values():
        if value < 0:
            raise InvariantViolation("a negative accumulator delta")
