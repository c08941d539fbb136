"""Who is covered here, under which plan, and whether a penalty applies. Pure date arithmetic."""

from __future__ import annotations

from datetime import date

from gateway.engine.model import ApprovalKind, Enrolment, Institution, Person, VisitType
from gateway.engine.policy import Penalty, Policy, TierSwitch


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
        or institution.level != 3
        or institution.district == enrolment.district
        or has_approval(person, level3.approval_kinds, on, institution.code)
    ):
        return None, None
    for group in level3.exempt_groups:
        if enrolment.district in group and institution.district in group:
            return None, None
    return level3.penalty, "PENALTY_LEVEL3"
