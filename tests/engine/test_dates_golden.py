"""Dates of care, worked by hand: each line priced with the catalog entry valid on its service date,
and a stay across 1 January settled in the plan-year and under the policy version its policy's rule
names (the discharge date by default, the admission date where the policy says so)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from adapters.memory_store import MemoryStore
from gateway.codec import Envelope, PersonRef
from gateway.engine.model import Bill, BillLine, VisitType
from gateway.engine.plan_year import PlanKey
from gateway.engine.policy import StayDate
from gateway.service import Context, SettlementService
from rules_cache.static_data import FixedStatic

from .builders import CQ, bill, catalog, entry, fund, institution, person, policy, settle

CAT = catalog(
    CQ,
    # a price limit that changes mid-year: 18.00 until 06-30, 16.00 from 07-01
    entry("M1", "A", "material", price_limit_fen=1_800, effective_to=date(2026, 6, 30)),
    entry("M1", "A", "material", price_limit_fen=1_600, effective_from=date(2026, 7, 1)),
    # a drug that leaves the catalog at the end of the year
    entry("D1", "A", "drug", effective_to=date(2026, 12, 31)),
    entry("T1", "A", "item"),
)


def test_each_line_is_priced_with_the_entry_valid_on_its_service_date() -> None:
    # One stay, June 28 to July 3, two units of M1 at 18.00 each day: on June 29 the limit is 18.00
    # (nothing over it); on July 2 it is 16.00 (2.00 over the limit a unit, 4.00 for the line).
    stay = Bill(
        VisitType.INPATIENT,
        (
            BillLine("M1", 1_800, 2, 1, date(2026, 6, 29)),
            BillLine("M1", 1_800, 2, 2, date(2026, 7, 2)),
        ),
        admitted_on=date(2026, 6, 28),
        discharged_on=date(2026, 7, 3),
    )
    s = settle(stay, person(CQ, "500107"), institution(CQ, "500107", 3), CAT, on=date(2026, 7, 3))
    assert [(ln.over_limit_fen, ln.price_limit_fen) for ln in s.lines] == [(0, 1_800), (400, 1_600)]


def test_a_drug_given_before_it_left_the_catalog_is_covered_when_settled_after() -> None:
    # D1 leaves the catalog on 12-31. Given on 12-30 and settled on discharge, 01-03: covered, in
    # scope; given on 01-02 it is not effective any more: full self-pay.
    lines = (BillLine("D1", 50_000, 1, 1, date(2026, 12, 30)), BillLine("D1", 50_000, 1, 2, date(2027, 1, 2)))
    stay = Bill(VisitType.INPATIENT, lines, admitted_on=date(2026, 12, 28), discharged_on=date(2027, 1, 3))
    s = settle(stay, person(CQ, "500107"), institution(CQ, "500107", 3), CAT, on=date(2027, 1, 3))
    assert [(ln.in_scope_fen, ln.flags) for ln in s.lines] == [(50_000, ()), (0, ("NOT_EFFECTIVE",))]


def service(stay_date: StayDate) -> tuple[SettlementService, MemoryStore]:
    store = MemoryStore()
    store.add_person(person(CQ, "500107"), 0)
    v2026, v2027 = policy(CQ, date(2026, 6, 15)), policy(CQ, date(2027, 6, 15))
    staged = [dataclasses.replace(p, stay_date=stay_date) for p in (v2026, v2027)]
    static = FixedStatic(staged, [CAT], {i.code: i for i in [institution(CQ, "500107", 3)]})
    now = datetime(2027, 1, 3, 11, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    return SettlementService(Context(store, static, lambda: now)), store


@pytest.mark.parametrize(
    ("rule", "year", "version"),
    [(StayDate.DISCHARGE, 2027, "cq-2027.1"), (StayDate.ADMISSION, 2026, "cq-2026.1")],
)
def test_a_stay_across_new_year_settles_in_the_year_its_policy_names(
    rule: StayDate, year: int, version: str
) -> None:
    # Admitted 2026-12-28, discharged 2027-01-03. By the discharge date (the default) the stay is the
    # first of 2027, under the 2027 version; by the admission date, it belongs to 2026.
    svc, store = service(rule)
    stay = dataclasses.replace(
        bill("inpatient", ("T1", 500_000, 1)), admitted_on=date(2026, 12, 28), discharged_on=date(2027, 1, 3)
    )
    stay = dataclasses.replace(
        stay, lines=tuple(dataclasses.replace(ln, service_on=date(2027, 1, 3)) for ln in stay.lines)
    )
    env = Envelope("H50010700003", "T1", "op", "M1")
    settled = asyncio.run(svc.settle(env, PersonRef("x", None), stay, "h"))
    assert settled.split is not None and settled.split.policy_version == version
    (key,) = [k for (pid, _), years in store.years.items() for k in years if pid == "P1"]
    assert key == PlanKey(CQ, "employee", year)
    # a first stay at level 3: 800.00 deductible, 85% of 4,200.00 = 3,570.00, in either year
    assert (settled.split.deductible_fen, fund(settled.split, "basic")) == (80_000, 357_000)
