"""Who is covered here, under which plan, and whether a penalty applies. Pure date arithmetic."""

from __future__ import annotations

from datetime import date
from typing import NamedTuple

from gateway.engine.codes import Rejection
from gateway.engine.model import (
    ApprovalKind,
    Enrolment,
    EnrolmentStatus,
    Institution,
    Person,
    VisitType,
    grade,
)
from gateway.engine.policy import Penalty, Plan, Policy, TierSwitch
from gateway.engine.result import Rejected


class Coverage(NamedTuple):
    enrolment: Enrolment
    tier: int
    plan: Plan


def covered(
    person: Person, policy: Policy, institution: Institution, on: date, visit_type: VisitType | None
) -> Coverage | Rejected:
    """Whether this institution may settle for this person on `on` (for `visit_type`, when given), and
    under which enrolment, tier and plan: the first checks of a split, and what QueryEligibility says,
    so a card swipe and a pre-settlement never disagree."""
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
    if visit_type is not None and visit_type not in institution.visit_types:
        return Rejected(
            Rejection.VISIT_TYPE_NOT_AGREED, f"{institution.code} may not settle {visit_type} care"
        )
    tier = tier_in_force(enrolment, policy.tier_switch, on)
    plan = policy.plans.get((enrolment.scheme, tier)) if tier is not None else None
    if tier is None or plan is None:
        return Rejected(Rejection.NO_PLAN, f"no plan for {enrolment.scheme} tier {tier}")
    if visit_type is not None and visit_type not in plan.benefits:
        return Rejected(
            Rejection.VISIT_TYPE_NOT_COVERED, f"{enrolment.scheme} tier {tier} has no {visit_type} benefit"
        )
    out_rule = policy.out_of_region
    if (
        institution.region != enrolment.region
        and out_rule is not None
        and out_rule.reject_unfiled
        and not has_approval(person, out_rule.approval_kinds, on, institution.code)
    ):
        return Rejected(Rejection.OUT_OF_REGION_NOT_FILED, "out-of-region care needs a filing or referral")
    return Coverage(enrolment, tier, plan)


def enrolment_in_force(person: Person, region: str, on: date) -> Enrolment | None:
    """The person's enrolment in `region` on the date of care; the first listed wins if several are."""
    for enrolment in person.enrolments:
        if enrolment.region == region and enrolment.in_force(on):
            return enrolment
    return None


def first_of_month_after(day: date, months: int = 1) -> date:
    month_index = day.year * 12 + (day.month - 1) + months
    return date(month_index // 12, month_index % 12 + 1, 1)


def tier_in_force(enrolment: Enrolment, rule: TierSwitch, on: date) -> int | None:
    """Replays the tier history. The first tier applies from its date. A later switch to a lower tier
    applies from the first day of the next month; to a higher tier, from the first day of the next
    month plus the waiting period, the old tier in force meanwhile. A switch cancels any earlier switch
    that had not yet taken effect when it was made."""
    order = rule.tiers_low_to_high.get(enrolment.scheme, ())
    schedule: list[tuple[date, int]] = []  # (effective from, tier), in effective order
    for change in sorted(enrolment.tiers, key=lambda c: c.applied_on):
        if not schedule:
            schedule.append((change.applied_on, change.tier))
            continue
        schedule = [entry for entry in schedule if entry[0] <= change.applied_on]
        current = schedule[-1][1]
        if change.tier == current:
            continue
        upgrade = rank(order, change.tier) > rank(order, current)
        wait = rule.upgrade_wait_months if upgrade else 0
        schedule.append((first_of_month_after(change.applied_on, 1 + wait), change.tier))
    in_force = [tier for effective, tier in schedule if effective <= on]
    return in_force[-1] if in_force else None


def rank(order: tuple[int, ...], tier: int) -> int:
    return order.index(tier) if tier in order else -1


def has_approval(person: Person, kinds: frozenset[ApprovalKind], on: date, institution: str) -> bool:
    return any(a.kind in kinds and a.covers(on, institution) for a in person.approvals)


def penalty_for(
    policy: Policy,
    person: Person,
    enrolment: Enrolment,
    institution: Institution,
    visit_type: VisitType,
    on: date,
) -> tuple[Penalty | None, str | None]:
    """The penalty for care without the required approval, and the flag that names it."""
    if institution.region != enrolment.region:
        rule = policy.out_of_region
        if rule is None or has_approval(person, rule.approval_kinds, on, institution.code):
            return None, None
        return rule.penalty, "PENALTY_OUT_OF_REGION"
    level3 = policy.level3
    if (
        level3 is None
        or visit_type not in level3.visit_types
        or grade(institution.level) != 3
        or institution.district == enrolment.district
        or has_approval(person, level3.approval_kinds, on, institution.code)
    ):
        return None, None
    for group in level3.exempt_groups:
        if enrolment.district in group and institution.district in group:
            return None, None
    return level3.penalty, "PENALTY_LEVEL3"
