"""A region's insurance policy as validated, immutable data (built by rules_cache.policy_files from
TOML). Names mirror the policy language documented in docs/POLICY_LANGUAGE.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import NamedTuple

from gateway.engine.audit_rules import AuditPolicy
from gateway.engine.model import ApprovalKind, ItemKind, PersonType, Scheme, VisitType


class StayRule(StrEnum):
    NONE = "none"  # every stay pays the full standard
    REDUCE = "reduce"  # each later stay lower by a share of the standard, down to a floor
    HALF_THEN_NONE = "half_then_none"  # full, then half on the second stay, none after


class DeductibleScope(StrEnum):
    VISIT = "visit"  # each bill (each stay) has its own deductible
    YEAR = "year"  # one deductible met across all visits of the year


class CapOn(StrEnum):
    FUND = "fund"  # the annual maximum limits what the fund pays
    COST = "cost"  # the annual maximum limits the eligible cost the ratio applies to


class RatioMeasure(StrEnum):
    ELIGIBLE = "eligible"  # ratio bands count from zero on the cost above the deductible
    IN_SCOPE = (
        "in_scope"  # bands count on the in-scope cost from zero, the deductible filling the first slice
    )


class BandScope(StrEnum):
    BILL = "bill"  # bands are measured on this bill's eligible cost
    YEAR = "year"  # bands are measured on the year's cumulative eligible cost


class Band(NamedTuple):
    """Slice [previous upto, upto) of a base, paid at ratio_bp. upto None: no upper bound."""

    upto_fen: int | None
    ratio_bp: int


@dataclass(frozen=True, slots=True)
class PersonRule:
    """A condition on the person (a type, an age range, both) and what it does when it matches: a
    deductible standard or multiplier, or points added to a ratio. Rules are tried in file order; the
    first that matches wins (retirees aged 70 or over before retirees)."""

    person_type: PersonType | None = None
    min_age: int | None = None
    max_age: int | None = None
    standard_fen: int | None = None  # deductible: replaces the level's standard
    multiplier_bp: int | None = None  # deductible: multiplies the standard
    add_bp: int = 0  # ratio: points added

    def matches(self, person_type: PersonType, age: int) -> bool:
        return (
            (self.person_type is None or self.person_type is person_type)
            and (self.min_age is None or age >= self.min_age)
            and (self.max_age is None or age <= self.max_age)
        )


@dataclass(frozen=True, slots=True)
class Deductible:
    by_level_fen: Mapping[int, int]
    key: str  # yearly accumulator of deductible paid
    scope: DeductibleScope = DeductibleScope.VISIT
    person_type_bp: Mapping[PersonType, int] = field(default_factory=dict)  # multiplier on the standard
    stay_rule: StayRule = StayRule.NONE
    stays_key: str | None = None  # yearly count of stays; needed by the stay rules
    reduce_each_stay_bp: int = 0  # REDUCE: share of the standard removed per later stay
    floor_fen: int = 0  # REDUCE: never below this
    yearly_cap_fen: int | None = None  # total deductible paid in a year never exceeds this
    floor_by_level_fen: Mapping[int, int] | None = None  # REDUCE: a floor per institution level
    person_rules: tuple[PersonRule, ...] = ()  # first match replaces person_type_bp

    def floor(self, level: int) -> int:
        return self.floor_fen if self.floor_by_level_fen is None else self.floor_by_level_fen[level]


@dataclass(frozen=True, slots=True)
class AgeBonus:
    """ratio + min(max_bp, max(0, age - from_age) * bp_per_year)"""

    from_age: int
    bp_per_year: int
    max_bp: int


@dataclass(frozen=True, slots=True)
class Ratio:
    bands: tuple[Band, ...]  # by_level in the file becomes one open band at 0 plus level_add_bp
    level_add_bp: Mapping[int, int] = field(default_factory=dict)
    bands_scope: BandScope = BandScope.BILL
    person_type_add_bp: Mapping[PersonType, int] = field(default_factory=dict)
    age_bonus: AgeBonus | None = None
    measured_on: RatioMeasure = RatioMeasure.ELIGIBLE
    person_rules: tuple[PersonRule, ...] = ()  # first match adds its add_bp
    # Coinsurance per catalog group or item kind: the fund's ratio on those lines' eligible cost, in place
    # of the bands (a group named on the catalog entry wins over its kind).
    group_fund_bp: Mapping[str, int] = field(default_factory=dict)
    kind_fund_bp: Mapping[ItemKind, int] = field(default_factory=dict)

    def line_ratio(self, kind: ItemKind, group: str) -> int | None:
        """The fixed fund ratio for a line of this kind and group, None when the bands apply."""
        if group and group in self.group_fund_bp:
            return self.group_fund_bp[group]
        return self.kind_fund_bp.get(kind)


@dataclass(frozen=True, slots=True)
class BasicLayer:
    fund_code: str
    ratio: Ratio
    fund_key: str  # yearly accumulator of what this fund paid
    cost_key: str  # yearly accumulator of the eligible cost it was applied to
    deductible: Deductible | None = None
    annual_max_fen: int | None = None
    annual_max_on: CapOn = CapOn.FUND
    name: str = "basic"
    annual_max_counts_deductible: bool = False  # CapOn.COST: the deductible paid counts inside the maximum


@dataclass(frozen=True, slots=True)
class SupplementaryLayer:
    """A layer paid after the basic one: large-amount mutual aid, relief fund, critical illness,
    civil-servant subsidy, medical assistance.

    Its base is the in-scope burden the person still carries: the excess over the basic layer's maximum
    always, plus the deductible and the co-payment when the policy says so. The base accumulates over
    the year (base_key); `bands` are absolute slices of that cumulative base (the file may give them
    measured on the excess over `threshold_fen`; the loader shifts them), and nothing is paid below
    the threshold."""

    name: str
    fund_code: str
    bands: tuple[Band, ...]
    fund_key: str
    base_key: str
    visit_types: frozenset[VisitType]
    threshold_fen: int = 0
    include_deductible: bool = False
    include_copay: bool = False
    annual_max_fen: int | None = None
    person_types: frozenset[PersonType] = frozenset()  # empty: everyone
    person_tags: frozenset[str] = frozenset()  # empty: everyone; else any of these tags
    include_first_selfpay: bool = False  # the base includes the class-B first self-pay
    include_excess: bool = True  # the base includes the cost above the basic layer's maximum
    level_add_bp: Mapping[int, int] = field(default_factory=dict)  # points added to the bands by level


@dataclass(frozen=True, slots=True)
class DiseasePayment:
    """Per-disease payment (单病种定额): a stay whose principal diagnosis (the bill's first diagnosis
    code) starts with one of `diagnoses` is settled at a fixed fund payment, whatever its lines; the
    person pays a fixed share, or the rest of the bill up to a cap; the institution bears the
    difference (hosp_part_amt; negative when the quota exceeds the bill: it keeps the surplus)."""

    name: str
    diagnoses: tuple[str, ...]
    fund_fen: int
    fund_code: str
    fund_key: str = "fund.per_disease"
    personal_fen: int | None = None  # fixed personal share
    personal_max_fen: int | None = None  # capped: min(cap, bill - fund payment)

    def matches(self, principal: str) -> bool:
        return any(principal.startswith(d) for d in self.diagnoses)


@dataclass(frozen=True, slots=True)
class Benefit:
    """What a plan pays for one visit type."""

    basic: BasicLayer | None  # None: no pooled fund pays (e.g. Jinan: pharmacies are account only)
    account_allowed: bool = True
    account_excludes_full_selfpay: bool = False
    account_excludes_over_limit: bool = False
    # Maternity: event -> level -> lump sum in fen, paid by lump_sum_fund_code instead of a cascade.
    lump_sums_fen: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    lump_sum_fund_code: str = "510100"
    lump_sum_key: str = "fund.maternity"
    lump_sums_per_year: int = 1  # how often one event's lump sum may be paid in a plan-year
    requires_registration: bool = False  # special diseases: bill's disease must be registered
    per_disease: tuple[DiseasePayment, ...] = ()  # first match by the principal diagnosis

    def lump_sum_count_key(self, event: str) -> str:
        """The counter of lump sums paid for `event` this plan-year."""
        return f"count.{self.lump_sum_key}.{event}"


@dataclass(frozen=True, slots=True)
class Plan:
    scheme: Scheme
    tier: int
    benefits: Mapping[VisitType, Benefit]
    layers: tuple[SupplementaryLayer, ...]
    first_selfpay_bp: Mapping[ItemKind, int]  # class B default by kind when the entry has none
    caps: tuple[tuple[str, int], ...] = ()  # (counter, annual maximum): checked after every bill


@dataclass(frozen=True, slots=True)
class Penalty:
    deductible_bp: int  # multiplier on the deductible standard: 10500 = +5%
    ratio_minus_bp: int  # percentage points off the ratio: 500 = -5 points


class ClaimCase(StrEnum):
    """Care claimed after the fact (手工报销) because it could not be settled at the counter."""

    NON_DESIGNATED = "non_designated"  # at a non-designated institution (非定点)
    EMERGENCY = "emergency"  # an emergency (急诊抢救)
    OUT_OF_CITY = "out_of_city"  # outside the city, without direct settlement (异地就医)


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """What the policy does with one case of claim: a penalty (deductible multiplier, ratio points off)
    and optionally a fixed basic ratio in place of the plan's."""

    penalty: Penalty
    ratio_bp: int | None = None


@dataclass(frozen=True, slots=True)
class Level3Rule:
    """Chongqing: an inpatient stay at a level-3 hospital outside the insured district needs the insured
    district agency's approval; without it the penalty applies, unless both districts are in one
    exempt group (the main city's nine districts choose freely among themselves)."""

    penalty: Penalty
    visit_types: frozenset[VisitType]
    approval_kinds: frozenset[ApprovalKind]
    exempt_groups: tuple[frozenset[str], ...] = ()


@dataclass(frozen=True, slots=True)
class OutOfRegionRule:
    """Care at a designated institution of another region (cross-region direct settlement)."""

    reject_unfiled: bool
    penalty: Penalty  # applied to unfiled care when not rejected
    approval_kinds: frozenset[ApprovalKind]


@dataclass(frozen=True, slots=True)
class TierSwitch:
    """Ziyang: a switch to a lower tier applies from the first day of the next month; a switch to a
    higher tier waits `upgrade_wait_months` more months, the old tier in force meanwhile."""

    tiers_low_to_high: Mapping[Scheme, tuple[int, ...]]
    upgrade_wait_months: int = 0


class StayDate(StrEnum):
    """Which date of a stay chooses the policy version and the plan-year (a stay across 1 January)."""

    DISCHARGE = "discharge"  # the usual rule: the year the patient is discharged (出院日期)
    ADMISSION = "admission"


class Corrections(StrEnum):
    """What a correction (reversal, partial refund) of a settlement that is not the latest of its
    plan-year does about the settlements computed after it."""

    REFUSE = "refuse"  # refused until the later settlements are reversed (the default)
    READJUDICATE = "readjudicate"  # the later ones are split again in order; differences are adjustments


@dataclass(frozen=True, slots=True)
class Policy:
    region: str
    name: str
    version: str
    effective_from: date
    effective_to: date | None
    plans: Mapping[tuple[Scheme, int], Plan]
    tier_switch: TierSwitch
    level3: Level3Rule | None = None
    out_of_region: OutOfRegionRule | None = None
    corrections: Corrections = Corrections.REFUSE
    stay_date: StayDate = StayDate.DISCHARGE
    audit: AuditPolicy | None = None  # pre-settlement audit rules (3101/3102)
    claims: Mapping[ClaimCase, ClaimRule] = field(default_factory=dict)  # a case not listed: no claims
    source: str = ""  # the file it was loaded from, for error messages and audit

    def in_force(self, on: date) -> bool:
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)


def in_force_on(versions: tuple[Policy, ...], on: date) -> Policy | None:
    """Of a region's staged versions (ordered by effective_from), the one in force on `on`: the latest
    that has begun, unless its own effective_to has passed. An open-ended version runs until the next
    one takes over, so next year's policy can be published months ahead."""
    found = None
    for p in versions:
        if p.effective_from > on:
            break
        found = p
    if found is None or (found.effective_to is not None and on > found.effective_to):
        return None
    return found
