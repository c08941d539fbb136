"""Claims after the fact (手工报销): care the patient paid in full at a non-designated institution, in
an emergency, or outside the city (MOHRSS 2007; Chongqing residents), claimed later at the agency with
the receipts. Split by the same cascade as a bill at the counter, under the policy's rule for that case
(`[claims]`: a penalty, a fixed ratio, or not claimable), on the person's plan-year.

A claim has no catalog lines: the receipts' totals are its lines, one per part, so the recorded bill
(codes RECEIPT_*) splits again exactly as it did (corrections, the auditor) and every part adds up:

    RECEIPT_IN_SCOPE      in scope (政策范围内)
    RECEIPT_FULL_SELFPAY  full self-pay (全自费)
    RECEIPT_OVER_LIMIT    over the price limits (超限价)
    RECEIPT_FIRST_SELFPAY class B first self-pay (乙类先行自付)

The recorded institution names the case and the level of the institution: `CLAIM:<case>:<level>`.
Pure: no I/O."""

from __future__ import annotations

import dataclasses
from datetime import date

from gateway.engine.cascade import Visit, run_cascade
from gateway.engine.codes import Rejection
from gateway.engine.eligibility import enrolment_in_force, tier_in_force
from gateway.engine.lines import STAY_VISITS
from gateway.engine.model import (
    NO_STAY,
    Bill,
    BillLine,
    Catalog,
    EnrolmentStatus,
    ItemClass,
    Person,
    PersonState,
    StayTotals,
    VisitType,
)
from gateway.engine.policy import Band, ClaimCase, Penalty, Policy
from gateway.engine.result import FundPayment, LineSplit, Rejected, SplitOutcome, TraceStep

IN_SCOPE, FULL, OVER, FIRST = (
    "RECEIPT_IN_SCOPE",
    "RECEIPT_FULL_SELFPAY",
    "RECEIPT_OVER_LIMIT",
    "RECEIPT_FIRST_SELFPAY",
)
CLAIM_PREFIX = "CLAIM:"
CATALOG_VERSION = "claim-receipts"


def claim_institution(case: ClaimCase, level: int) -> str:
    return f"{CLAIM_PREFIX}{case.value}:{level}"


def parse_claim_institution(code: str) -> tuple[ClaimCase, int] | None:
    if not code.startswith(CLAIM_PREFIX):
        return None
    case, _, level = code[len(CLAIM_PREFIX) :].partition(":")
    return ClaimCase(case), int(level)


def claim_bill(
    visit_type: VisitType,
    in_scope_fen: int,
    full_selfpay_fen: int = 0,
    over_limit_fen: int = 0,
    first_selfpay_fen: int = 0,
    **dates: date | None,
) -> Bill:
    """The receipts' totals as a bill (zero parts left out)."""
    parts = (
        (IN_SCOPE, in_scope_fen),
        (FULL, full_selfpay_fen),
        (OVER, over_limit_fen),
        (FIRST, first_selfpay_fen),
    )
    lines = tuple(
        BillLine(code, amount, 1, i + 1) for i, (code, amount) in enumerate(p for p in parts if p[1])
    )
    return Bill(visit_type, lines, use_account=False, **dates)  # type: ignore[arg-type]


def receipt_line(line: BillLine) -> LineSplit:
    amount = line.unit_price_fen * line.quantity
    if line.code == FULL:
        return LineSplit(line.line_no, line.code, ItemClass.C, amount, amount, 0, 0, 0, 0, None, ("CLAIM",))
    if line.code == OVER:
        return LineSplit(line.line_no, line.code, ItemClass.A, amount, 0, amount, 0, 0, 0, None, ("CLAIM",))
    if line.code == FIRST:
        return LineSplit(line.line_no, line.code, ItemClass.B, amount, 0, 0, amount, 0, 0, None, ("CLAIM",))
    return LineSplit(line.line_no, line.code, ItemClass.A, amount, 0, 0, 0, amount, 0, None, ("CLAIM",))


def split_claim(
    bill: Bill,
    case: ClaimCase,
    level: int,
    policy: Policy,
    person: Person,
    state: PersonState,
    on: date,
    stay: StayTotals = NO_STAY,
) -> SplitOutcome:
    """The claim's split: what the funds owe the person, and the share the person keeps paying."""
    from gateway.engine.split import finish  # the same finishing (account, cash, invariants) as split()

    enrolment = enrolment_in_force(person, policy.region, on)
    if enrolment is None:
        return Rejected(Rejection.NOT_ENROLLED, f"no enrolment in region {policy.region} on {on}")
    if enrolment.status is EnrolmentStatus.SUSPENDED:
        return Rejected(Rejection.ENROLMENT_SUSPENDED, "enrolment suspended (contributions in arrears)")
    if not policy.in_force(on):
        return Rejected(Rejection.POLICY_NOT_IN_FORCE, f"policy {policy.version} not in force on {on}")
    tier = tier_in_force(enrolment, policy.tier_switch, on)
    plan = policy.plans.get((enrolment.scheme, tier)) if tier is not None else None
    if tier is None or plan is None:
        return Rejected(Rejection.NO_PLAN, f"no plan for {enrolment.scheme} tier {tier}")
    benefit = plan.benefits.get(bill.visit_type)
    if benefit is None or bill.visit_type is VisitType.MATERNITY:
        return Rejected(
            Rejection.VISIT_TYPE_NOT_COVERED, f"{enrolment.scheme} tier {tier} has no {bill.visit_type} claim"
        )
    rule = policy.claims.get(case)
    if rule is None:
        return Rejected(Rejection.CLAIM_CASE_NOT_COVERED, f"policy {policy.version} pays no {case} claims")
    if level not in (0, 1, 2, 3, 4, 5, 6, 7, 8):
        return Rejected(Rejection.CLAIM_CASE_NOT_COVERED, f"institution level {level} is not a level")

    lines = [receipt_line(line) for line in bill.lines]
    in_scope = sum(line.in_scope_fen for line in lines)
    first_selfpay = sum(line.first_selfpay_fen for line in lines)
    trace = [TraceStep("claim.case", f"{case}: deductible x{rule.penalty.deductible_bp}bp", 0)]
    deltas: dict[str, int] = {}
    deductible = counted = 0
    funds: list[FundPayment] = []
    penalty = rule.penalty if rule.penalty != Penalty(10_000, 0) else None
    if benefit.basic is not None:
        basic = benefit.basic
        if rule.ratio_bp is not None:  # the case's own ratio replaces the plan's, adjustments and all
            ratio = dataclasses.replace(
                basic.ratio, bands=(Band(None, rule.ratio_bp),), level_add_bp={}, person_type_add_bp={},
                age_bonus=None, person_rules=(), group_fund_bp={}, kind_fund_bp={},
            )  # fmt: skip
            basic = dataclasses.replace(basic, ratio=ratio)
        age = person.age_on(on)
        visit = Visit(bill.visit_type, level, enrolment.person_type, age, person.tags, on.year, penalty)
        deductible, funds, counted, _ = run_cascade(
            basic, plan.layers, visit, state, stay, in_scope, deltas, trace, first_selfpay
        )
    part = None
    if bill.visit_type in STAY_VISITS:
        part = StayTotals(1, counted, in_scope, in_scope - deductible, deductible, 0, {}, 1)
    flags = [f"CLAIM_{case.value.upper()}"]
    if penalty is not None:
        flags.append("PENALTY_CLAIM")
    receipts = Catalog(policy.region, CATALOG_VERSION, {})  # the claim's "catalog" is its receipts
    return finish(
        policy, receipts, plan, benefit, bill, state, lines, deductible, funds, deltas, trace, flags, part
    )
