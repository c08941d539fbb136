"""Retention by days in the pure core (gateway.engine.plan_year.retire, retirable): the oldest live
settlements of a plan-year leave it, what they added moves to its retired totals, and the plan-year is
the same fold for everything that stays: worked by hand, then as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.engine.model import StayTotals
from gateway.engine.money import InvariantViolation
from gateway.engine.plan_year import Contribution, PlanKey, before, fold, retirable, retire

KEY = PlanKey("500000", "employee", 2026)


def c(sid: str, stay: str | None = None, **deltas: int) -> Contribution:
    return Contribution(sid, deltas, stay, StayTotals(1, 0, 1_000) if stay else None)


def test_two_outpatient_bills_retire_into_the_years_totals_worked_by_hand() -> None:
    # opening: 300.00 of the deductible met before the gateway; March 200.00 more and 500.00 paid by the
    # fund; April 100.00 paid; June 50.00 paid. March and April retire; June stays live.
    year = fold(KEY, {"ded": 30_000}, [
        c("S1", ded=20_000, fund=50_000), c("S2", fund=10_000), c("S3", fund=5_000),
    ])  # fmt: skip
    assert dict(year.accumulators) == {"ded": 50_000, "fund": 65_000}
    first = retirable(year, {"S1": c("S1", ded=20_000, fund=50_000), "S2": c("S2", fund=10_000)})
    after = retire(year, first)
    assert after.live == ("S3",)
    assert dict(after.opening) == {"ded": 30_000}  # what the core system exported: unchanged
    assert dict(after.retired) == {"ded": 20_000, "fund": 60_000}
    assert after.base == {"ded": 50_000, "fund": 60_000}
    assert after.accumulators == year.accumulators  # the next bill splits on the same state
    assert fold(KEY, after.base, [c("S3", fund=5_000)]).accumulators == year.accumulators


def test_only_a_prefix_retires_and_a_stay_stops_it() -> None:
    year = fold(KEY, {}, [c("S1", fund=1), c("S2", "stay-1", fund=2), c("S3", fund=3)])
    everything = {sid: c(sid) for sid in ("S1", "S2", "S3")}
    everything["S2"] = c("S2", "stay-1", fund=2)
    assert [x.settlement_id for x in retirable(year, everything)] == ["S1"]
    assert retirable(year, {"S2": c("S2", fund=2), "S3": c("S3", fund=3)}) == []  # S1 must go first
    with pytest.raises(InvariantViolation, match="not the start"):
        retire(year, [c("S3", fund=3)])
    with pytest.raises(InvariantViolation, match="stay"):
        retire(year, [c("S1", fund=1), c("S2", "stay-1", fund=2)])


names = st.sampled_from(["ded", "fund", "visits", "cost"])
deltas = st.dictionaries(names, st.integers(1, 100_000), max_size=3)


@st.composite
def years(draw: st.DrawFn) -> tuple[dict[str, int], list[Contribution], set[str]]:
    opening = draw(st.dictionaries(names, st.integers(1, 1_000_000), max_size=2))
    count = draw(st.integers(0, 12))
    settlements = [
        c(f"S{i}", draw(st.sampled_from([None, None, None, "stay-a", "stay-b"])), **draw(deltas))
        for i in range(count)
    ]
    eligible = {x.settlement_id for x in settlements if draw(st.booleans())}
    return opening, settlements, eligible


@given(years(), st.integers(0, 12))
def test_what_stays_is_the_same_fold_and_corrections_see_the_same_state(case, tail_len: int) -> None:  # type: ignore[no-untyped-def]
    opening, settlements, eligible = case
    year = fold(KEY, opening, settlements)
    first = retirable(year, {x.settlement_id: x for x in settlements if x.settlement_id in eligible})
    n = len(first)
    assert first == settlements[:n] and all(x.stay_id is None and x.settlement_id in eligible for x in first)
    if n < len(settlements):  # it stopped at the first that may not go
        stopper = settlements[n]
        assert stopper.settlement_id not in eligible or stopper.stay_id is not None
    after = retire(year, first)
    rest = settlements[n:]
    assert (after.accumulators, after.stays) == (year.accumulators, year.stays)
    again = fold(KEY, after.base, rest)  # what the auditor folds: the base, then the live ones
    assert (again.accumulators, again.stays) == (year.accumulators, year.stays)
    # a correction of one of the live ones re-splits on what it did before retirement
    tail = rest[len(rest) - min(tail_len, len(rest)) :]
    assert before(after, tail).accumulators == before(year, tail).accumulators


@given(years())
def test_retired_totals_that_were_not_written_would_be_found(case) -> None:  # type: ignore[no-untyped-def]
    # what the auditor compares: the fold of the live ones on the opening alone misses what retired
    opening, settlements, eligible = case
    year = fold(KEY, opening, settlements)
    first = retirable(year, {x.settlement_id: x for x in settlements if x.settlement_id in eligible})
    after = retire(year, first)
    without = fold(KEY, after.opening, settlements[len(first) :])
    moved = any(x.deltas for x in first)
    assert (without.accumulators != year.accumulators) == moved
