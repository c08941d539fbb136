"""Small builders so a golden case reads like the worked example it is. Policies are the shipped files
in citydata/policies (what production settles by); catalog entries are built inline so each line's
arithmetic is visible in the test."""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path

from gateway.engine import Rejected, Split, split
from gateway.engine.model import (
    Approval,
    ApprovalKind,
    Bill,
    BillLine,
    Catalog,
    CatalogEntry,
    DiseaseRegistration,
    Enrolment,
    EnrolmentStatus,
    Institution,
    InstitutionType,
    ItemClass,
    ItemKind,
    Person,
    PersonState,
    PersonType,
    Scheme,
    Sex,
    TierChange,
    VisitType,
)
from gateway.engine.policy import Policy, in_force_on
from rules_cache.policy_files import load_policy_file
from rules_cache.staging import stage

POLICY_DIR = Path(__file__).resolve().parents[2] / "citydata" / "policies"
ON = date(2026, 6, 15)  # the date of care in every case unless a case says otherwise
CQ, YC, ZY, JN = "500000", "320900", "512000", "370100"
ALL_VISITS = frozenset(VisitType)


@cache
def policy(region: str, on: date = ON) -> Policy:
    """The shipped version of the region's policy in force on `on` (a region may have several staged)."""
    versions = tuple(stage([], [load_policy_file(p) for p in POLICY_DIR.glob(f"{region}-*.toml")]))
    found = in_force_on(versions, on)
    assert found is not None, (region, on)
    return found


def entry(code: str, cls: str = "A", kind: str = "drug", **kw: object) -> CatalogEntry:
    return CatalogEntry(code=code, name=code, kind=ItemKind(kind), item_class=ItemClass(cls), **kw)  # type: ignore[arg-type]


def catalog(region: str, *entries: CatalogEntry) -> Catalog:
    return Catalog.of(region, f"{region}-test", entries)


def institution(
    region: str,
    district: str,
    level: int,
    kind: str = "hospital",
    visit_types: frozenset[VisitType] = ALL_VISITS,
    designated: bool = True,
) -> Institution:
    return Institution(
        code=f"H{district}{level:05d}",
        name="test",
        type=InstitutionType(kind),
        level=level,
        region=region,
        district=district,
        designated=designated,
        visit_types=visit_types,
    )


def person(
    region: str,
    district: str,
    scheme: str = "employee",
    tiers: tuple[tuple[int, date], ...] = ((1, date(2020, 1, 1)),),
    person_type: str = "in_service",
    birth: date = date(1980, 1, 1),
    sex: str = "M",
    approvals: tuple[tuple[str, str | None], ...] = (),
    diseases: tuple[str, ...] = (),
    tags: frozenset[str] = frozenset(),
    status: str = "active",
) -> Person:
    enrolment = Enrolment(
        region,
        district,
        Scheme(scheme),
        PersonType(person_type),
        EnrolmentStatus(status),
        date(2020, 1, 1),
        None,
        tuple(TierChange(t, d) for t, d in tiers),
    )
    return Person(
        person_id="P1",
        name="测试",
        id_number="x",
        card_no="x",
        sex=Sex(sex),
        birth_date=birth,
        enrolments=(enrolment,),
        approvals=tuple(Approval(ApprovalKind(k), date(2026, 1, 1), None, i) for k, i in approvals),
        special_diseases=tuple(DiseaseRegistration(d, date(2025, 1, 1), None) for d in diseases),
        tags=tags,
    )


def state(balance_fen: int = 0, **accumulators: int) -> PersonState:
    """Accumulator names use '_' for '.', e.g. fund_basic=... for fund.basic."""
    return PersonState(balance_fen, ON.year, {k.replace("_", "."): v for k, v in accumulators.items()})


def bill(visit: str, *lines: tuple[str, int, int], **kw: object) -> Bill:
    return Bill(
        VisitType(visit),
        tuple(BillLine(code, price, qty, i + 1) for i, (code, price, qty) in enumerate(lines)),
        **kw,  # type: ignore[arg-type]
    )


def settle(
    b: Bill,
    p: Person,
    inst: Institution,
    cat: Catalog,
    st: PersonState | None = None,
    on: date = ON,
) -> Split:
    region = p.enrolments[0].region
    result = split(b, policy(region), cat, inst, p, st or state(), on)
    assert isinstance(result, Split), result
    return result


def reject(
    b: Bill, p: Person, inst: Institution, cat: Catalog, st: PersonState | None = None, on: date = ON
) -> Rejected:
    result = split(b, policy(p.enrolments[0].region), cat, inst, p, st or state(), on)
    assert isinstance(result, Rejected), result
    return result


def fund(s: Split, layer: str) -> int:
    """What one layer paid (0 when it did not pay)."""
    return sum(f.amount_fen for f in s.funds if f.layer == layer)
