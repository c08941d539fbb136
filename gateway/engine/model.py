"""What the engine reads: catalog entries, institutions, persons, bills. Immutable values; money in fen,
ratios in basis points, dates as `datetime.date`. Loaders (rules_cache, adapters) build these; the engine
never parses anything."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from gateway.engine.money import InvariantViolation


class Scheme(StrEnum):
    EMPLOYEE = "employee"  # 职工基本医疗保险
    RESIDENT = "resident"  # 城乡居民基本医疗保险


class VisitType(StrEnum):
    OUTPATIENT = "outpatient"  # 普通门诊 (门诊统筹)
    INPATIENT = "inpatient"  # 住院
    PHARMACY = "pharmacy"  # 定点零售药店购药
    SPECIAL = "special"  # 门诊特殊疾病 / 慢性病 / 规定病种
    MATERNITY = "maternity"  # 生育


class InstitutionType(StrEnum):
    HOSPITAL = "hospital"
    CLINIC = "clinic"
    PHARMACY = "pharmacy"


class ItemKind(StrEnum):
    DRUG = "drug"  # 药品
    ITEM = "item"  # 诊疗项目
    MATERIAL = "material"  # 医用耗材
    FACILITY = "facility"  # 医疗服务设施


class ItemClass(StrEnum):
    A = "A"  # 甲类: fully in scope
    B = "B"  # 乙类: first self-pay ratio, then in scope
    C = "C"  # 丙类: full self-pay


class PersonType(StrEnum):
    IN_SERVICE = "in_service"
    RETIREE = "retiree"
    MIGRANT_WORKER = "migrant_worker"
    FLEXIBLE = "flexible"  # 灵活就业
    STUDENT = "student"
    CHILD = "child"
    ADULT = "adult"
    ELDERLY = "elderly"


class EnrolmentStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # 欠费暂停


class ApprovalKind(StrEnum):
    REFERRAL = "referral"  # 转诊
    FILING = "filing"  # 异地就医备案
    EMERGENCY_REPORT = "emergency_report"  # 急诊报备
    LEVEL3 = "level3"  # 参保区县经办机构同意到区外三级医院住院


# Institution levels. 0-3 are the grades (0 community/primary/ungraded, 1, 2, 3); 4-8 are the tiers many
# local tables use instead. A policy's by-level table that does not name a tier gives it the value of
# the grade in GRADE_OF (docs/POLICY_LANGUAGE.md section 10), so old policy files settle such
# institutions too; the catalog's min_level and the level-3 rule compare grades.
GRADES = (0, 1, 2, 3)
LEVEL_NAMES = {4: "community", 5: "township", 6: "county", 7: "city", 8: "provincial"}
LEVEL_CODES = {name: code for code, name in LEVEL_NAMES.items()}
GRADE_OF = {0: 0, 1: 1, 2: 2, 3: 3, 4: 0, 5: 1, 6: 2, 7: 3, 8: 3}
LEVELS = tuple(GRADE_OF)


def grade(level: int) -> int:
    """The grade (0-3) a level compares as."""
    return GRADE_OF[level]


class Sex(StrEnum):
    MALE = "M"
    FEMALE = "F"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    code: str
    name: str
    kind: ItemKind
    item_class: ItemClass
    # First self-pay ratio for class B; None means "use the policy's default for this kind".
    selfpay_bp: int | None = None
    selfpay_bp_by_scheme: Mapping[Scheme, int] = field(default_factory=dict)
    price_limit_fen: int | None = None  # unit price upper limit (限价 / 最高支付标准)
    min_level: int | None = None  # covered only at institutions of this level or above
    inpatient_only: bool = False
    special_diseases: frozenset[str] = frozenset()  # covered only for persons registered for one
    sex: Sex | None = None
    age_min: int | None = None
    age_max: int | None = None
    quantity_per_visit_max: int | None = None
    effective_from: date = date(1900, 1, 1)
    effective_to: date | None = None
    unit: str = ""
    ref_price_fen: int = 0  # reference price for demos and load tests; never used in a split
    group: str = ""  # a catalog group a policy may give its own ratio (e.g. implant_imported)


@dataclass(frozen=True, slots=True)
class Institution:
    code: str
    name: str
    type: InstitutionType
    level: int  # 0 community/primary/ungraded, 1, 2, 3; 4-8 the tiers of LEVEL_NAMES
    region: str  # pooling region (city) code, e.g. 500000
    district: str
    designated: bool
    visit_types: frozenset[VisitType]
    city_managed: bool = False  # the city agency, not the district's, settles with it (Yancheng level 3)


@dataclass(frozen=True, slots=True)
class TierChange:
    tier: int
    applied_on: date


@dataclass(frozen=True, slots=True)
class Enrolment:
    region: str
    district: str
    scheme: Scheme
    person_type: PersonType
    status: EnrolmentStatus
    valid_from: date
    valid_to: date | None
    tiers: tuple[TierChange, ...]

    def in_force(self, on: date) -> bool:
        return self.valid_from <= on and (self.valid_to is None or on <= self.valid_to)


@dataclass(frozen=True, slots=True)
class Approval:
    kind: ApprovalKind
    valid_from: date
    valid_to: date | None
    institution: str | None = None  # None: any institution

    def covers(self, on: date, institution_code: str) -> bool:
        in_dates = self.valid_from <= on and (self.valid_to is None or on <= self.valid_to)
        return in_dates and (self.institution is None or self.institution == institution_code)


@dataclass(frozen=True, slots=True)
class DiseaseRegistration:
    code: str
    valid_from: date
    valid_to: date | None

    def in_force(self, on: date) -> bool:
        return self.valid_from <= on and (self.valid_to is None or on <= self.valid_to)


@dataclass(frozen=True, slots=True)
class Person:
    """A person's static record (from the core system's enrolment export)."""

    person_id: str
    name: str
    id_number: str
    card_no: str
    sex: Sex
    birth_date: date
    enrolments: tuple[Enrolment, ...]
    approvals: tuple[Approval, ...] = ()
    special_diseases: tuple[DiseaseRegistration, ...] = ()
    tags: frozenset[str] = frozenset()  # e.g. low_income (医疗救助), civil_servant

    def age_on(self, on: date) -> int:
        before_birthday = (on.month, on.day) < (self.birth_date.month, self.birth_date.day)
        return on.year - self.birth_date.year - int(before_birthday)


@dataclass(frozen=True, slots=True)
class PersonState:
    """The mutable part, read from Redis just before a split: personal account and the year-to-date
    accumulators of `year`. Accumulator names are chosen by the policy (for example `ded.inpatient`,
    `fund.basic`, `stays.inpatient`); a missing name is zero."""

    account_balance_fen: int
    year: int
    accumulators: Mapping[str, int] = field(default_factory=dict)

    def acc(self, name: str, year: int) -> int:
        if year != self.year:
            return 0  # a new year starts every accumulator from zero
        return self.accumulators.get(name, 0)


@dataclass(frozen=True, slots=True)
class StayTotals:
    """What the live parts of one inpatient stay add up to (interim settlements, 中途结算, grouped by a
    stay id). A stay is one stay whatever the number of parts: one deductible, one count in the year's
    stays, per-visit quantity limits across the parts, bill-scope cost bands continued from part to part.

    One part's contribution has the same shape, so the totals are the sum of the live parts and a
    reversed part is subtracted (gateway.engine.plan_year keeps them)."""

    parts: int = 0
    stay_no: int = 0  # the stay's number in the plan-year, set by the part that first counted it; 0: none
    in_scope_fen: int = 0
    eligible_fen: int = 0  # in scope after the deductible: where bill-scope cost bands continue
    deductible_fen: int = 0
    lump_sum_fen: int = 0  # maternity: lump sum paid so far in this stay
    quantities: Mapping[str, int] = field(default_factory=dict)  # units per catalog code across the parts
    closed: int = 0  # 1 when a final (not interim) part is live: no further part may settle

    def plus(self, other: StayTotals, sign: int = 1) -> StayTotals:
        quantities = dict(self.quantities)
        for code, units in other.quantities.items():
            left = quantities.get(code, 0) + sign * units
            if left:
                quantities[code] = left
            else:
                quantities.pop(code, None)
        return StayTotals(
            self.parts + sign * other.parts,
            self.stay_no + sign * other.stay_no,
            self.in_scope_fen + sign * other.in_scope_fen,
            self.eligible_fen + sign * other.eligible_fen,
            self.deductible_fen + sign * other.deductible_fen,
            self.lump_sum_fen + sign * other.lump_sum_fen,
            quantities,
            self.closed + sign * other.closed,
        )

    def minus(self, other: StayTotals) -> StayTotals:
        return self.plus(other, -1)


NO_STAY = StayTotals()


@dataclass(frozen=True, slots=True)
class BillLine:
    code: str
    unit_price_fen: int
    quantity: int  # in the catalog entry's dispensing unit (a tablet, a box, a day)
    line_no: int = 0
    service_on: date | None = None  # fee_ocur_time: the catalog entry valid on this day prices the line


@dataclass(frozen=True, slots=True)
class Bill:
    visit_type: VisitType
    lines: tuple[BillLine, ...]
    disease_code: str | None = None  # the registered special disease treated (visit type special)
    maternity_event: str | None = None  # e.g. vaginal_delivery, caesarean (visit type maternity)
    emergency: bool = False
    use_account: bool = True  # the patient may decline paying from the personal account
    stay_id: str | None = None  # groups the interim parts of one inpatient stay (中途结算)
    interim: bool = False  # an interim part: the stay stays open for further parts
    visit_on: date | None = None  # outpatient, special, pharmacy: the day of the visit
    admitted_on: date | None = None  # inpatient, maternity: begndate
    discharged_on: date | None = None  # inpatient, maternity: enddate (an interim part: the day it runs to)
    diagnoses: tuple[str, ...] = ()  # the visit's diagnosis codes (ICD-10), for the audit rules

    def care_date(self, by_admission: bool) -> date | None:
        """The date of care that chooses the policy version and the plan-year: the visit date, or for a
        stay its discharge date (or its admission date, when the policy says so)."""
        if self.admitted_on is not None or self.discharged_on is not None:
            return self.admitted_on if by_admission else self.discharged_on
        return self.visit_on


def effective_from(entry: CatalogEntry) -> date:
    return entry.effective_from


@dataclass(frozen=True, slots=True)
class Catalog:
    """One published version of a region's catalog (the place of treatment's, for cross-region care).
    A code may have several entries with validity periods that do not overlap (the usual "old price
    limit until 06-30, new one from 07-01"): a line is priced with the one valid on its service date."""

    region: str
    version: str
    periods: Mapping[str, tuple[CatalogEntry, ...]]  # by code, ordered by effective_from

    @staticmethod
    def of(region: str, version: str, entries: Iterable[CatalogEntry]) -> Catalog:
        """The catalog of these entries. Overlapping periods of one code are a programmer error here:
        the parsers (rules_cache.records.catalog) refuse them first, naming the code and the dates."""
        by_code: dict[str, list[CatalogEntry]] = {}
        for e in entries:
            by_code.setdefault(e.code, []).append(e)
        periods = {}
        for code, found in by_code.items():
            found.sort(key=effective_from)
            for earlier, later in itertools.pairwise(found):
                if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                    raise InvariantViolation(f"catalog {version}: {code} has overlapping validity periods")
            periods[code] = tuple(found)
        return Catalog(region, version, periods)

    def entry(self, code: str, on: date) -> CatalogEntry | None:
        """The entry of `code` valid on `on`; when none is, the nearest one (which then prices the line
        as not effective); None when the code is not in the catalog at all. O(log periods)."""
        found = self.periods.get(code)
        if found is None:
            return None
        if len(found) == 1:
            return found[0]
        i = bisect.bisect_right(found, on, key=effective_from) - 1
        return found[max(i, 0)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.periods.values())
