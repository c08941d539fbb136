"""A person's money in one plan-year, as a fold.

A plan-year is (person, insured region, scheme, year): the accumulators a policy caps (deductible met,
fund paid, eligible cost, stays, lump sums) belong to one, so a person who is an employee in March and a
resident in August, or who moves city mid-year, starts the new plan with nothing used. A tier switch
inside one scheme stays in the same plan-year, as the policies say.

The state is the ordered list of live settlements and what they add up to:

    accumulators = opening + Σ deltas of the live settlements
    stays[id]    = Σ stay parts of the live settlements of that stay

`opening` is what the core system exported for the year before the gateway settled anything. Nothing
here does I/O: the store reads a PlanYear, the core returns the next one, the store writes it after
comparing versions.

Retention by days (gateway/posting/retention.py) takes the oldest live settlements out of Redis before
their plan-year ends: `retire` moves their deltas into `retired`, beside the opening, so

    accumulators = opening + retired + Σ deltas of the live settlements

still holds, and every live settlement still re-splits on the fold of the ones before it (only a prefix
of the live list retires). The opening stays what the core system exported: a rebuild folds from it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.engine.model import NO_STAY, PersonState, StayTotals
from gateway.engine.money import InvariantViolation

# A plan-year holds at most this many live settlements: with a bill at most BILL_TOTAL_MAX_FEN no
# accumulator or ledger sum of a plan-year can pass 10^12 fen (exact in a Lua number, far below 2^63).
LIVE_SETTLEMENTS_MAX = 1_000
BILL_TOTAL_MAX_FEN = 1_000_000_000  # 10,000,000.00 yuan: no real bill comes near it
ACCUMULATOR_MAX = LIVE_SETTLEMENTS_MAX * BILL_TOTAL_MAX_FEN


PLAN_YEARS_KEPT = 2  # the current and the previous plan-year are settled and corrected at the gateway


def oldest_plan_year(today_year: int, plan_years_kept: int = PLAN_YEARS_KEPT) -> int:
    """The oldest plan-year the gateway still settles and corrects; older ones have left Redis for the
    ledger (retention), so a bill of theirs would be split on a person-year state that is not there."""
    return today_year - plan_years_kept + 1


class PlanKey(NamedTuple):
    region: str  # insured region (insuplc_admdvs)
    scheme: str  # employee | resident
    year: int

    @property
    def plan(self) -> str:
        """The plan without the year: how a store names it inside the person's year."""
        return f"{self.region}:{self.scheme}"

    def __str__(self) -> str:
        return f"{self.region}:{self.scheme}:{self.year}"


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one live settlement adds to its plan-year; stored with the settlement so the fold can be
    undone (a reversal) and redone (an audit)."""

    settlement_id: str
    deltas: Mapping[str, int]
    stay_id: str | None = None
    stay: StayTotals | None = None  # the settlement's part of its stay, when it belongs to one


@dataclass(frozen=True, slots=True)
class PlanYear:
    key: PlanKey
    opening: Mapping[str, int] = field(default_factory=dict)
    live: tuple[str, ...] = ()  # settlement ids, in the order they were settled
    accumulators: Mapping[str, int] = field(default_factory=dict)
    stays: Mapping[str, StayTotals] = field(default_factory=dict)
    retired: Mapping[str, int] = field(default_factory=dict)  # deltas of the settlements retired

    @property
    def base(self) -> dict[str, int]:
        """What the live settlements fold on: the opening and what retired settlements added."""
        return add(self.opening, self.retired)

    def state(self, account_balance_fen: int) -> PersonState:
        """What the engine reads: this plan-year's accumulators and the balance the bill may use."""
        return PersonState(account_balance_fen, self.key.year, self.accumulators)

    def stay(self, stay_id: str | None) -> StayTotals:
        return self.stays.get(stay_id, NO_STAY) if stay_id else NO_STAY

    @property
    def latest(self) -> str | None:
        return self.live[-1] if self.live else None


def empty(key: PlanKey, opening: Mapping[str, int] | None = None) -> PlanYear:
    opening = dict(opening or {})
    return PlanYear(key, opening, (), dict(opening), {})


def add(totals: Mapping[str, int], deltas: Mapping[str, int], sign: int = 1) -> dict[str, int]:
    out = dict(totals)
    for name, value in deltas.items():
        left = out.get(name, 0) + sign * value
        if left < 0:
            raise InvariantViolation(f"accumulator {name} would go negative ({left})")
        if left > ACCUMULATOR_MAX:
            raise InvariantViolation(f"accumulator {name} would pass {ACCUMULATOR_MAX} ({left})")
        if left:
            out[name] = left
        else:
            out.pop(name, None)
    return out


def with_stay(stays: Mapping[str, StayTotals], c: Contribution, sign: int) -> dict[str, StayTotals]:
    out = dict(stays)
    if c.stay_id is None or c.stay is None:
        return out
    totals = out.get(c.stay_id, NO_STAY).plus(c.stay, sign)
    if totals.parts < 0 or totals.closed < 0 or totals.in_scope_fen < 0:
        raise InvariantViolation(f"stay {c.stay_id} would go below zero parts")
    if totals.parts:
        out[c.stay_id] = totals
    else:
        out.pop(c.stay_id, None)
    return out


def append(year: PlanYear, c: Contribution) -> PlanYear:
    """The plan-year after one more settlement."""
    if c.settlement_id in year.live:
        raise InvariantViolation(f"{c.settlement_id} is already live in {year.key}")
    return PlanYear(
        year.key,
        year.opening,
        (*year.live, c.settlement_id),
        add(year.accumulators, c.deltas),
        with_stay(year.stays, c, 1),
        year.retired,
    )


def fold(key: PlanKey, opening: Mapping[str, int], contributions: Iterable[Contribution]) -> PlanYear:
    """The plan-year of these live settlements, in this order, from its opening."""
    year = empty(key, opening)
    for c in contributions:
        year = append(year, c)
    return year


def before(year: PlanYear, tail: list[Contribution]) -> PlanYear:
    """The plan-year as it was before `tail`, its last live settlements (in order): what a correction
    of the first of them re-splits on. The tail's ids must be exactly the end of `live`."""
    if [c.settlement_id for c in tail] != list(year.live[len(year.live) - len(tail) :]):
        raise InvariantViolation(f"{[c.settlement_id for c in tail]} is not the end of {year.key}'s list")
    accumulators = year.accumulators
    stays = year.stays
    for c in reversed(tail):
        accumulators = add(accumulators, c.deltas, -1)
        stays = with_stay(stays, c, -1)
    return PlanYear(
        year.key, year.opening, year.live[: len(year.live) - len(tail)], accumulators, stays, year.retired
    )


def retirable(year: PlanYear, eligible: Mapping[str, Contribution]) -> list[Contribution]:
    """The longest prefix of the live list whose settlements may leave Redis (`eligible`: old enough,
    and the ledger holds them as Redis does), stopping at the first of a stay: the fold of stays starts
    empty, so a stay's settlements stay live until their plan-year leaves."""
    out: list[Contribution] = []
    for sid in year.live:
        c = eligible.get(sid)
        if c is None or c.stay_id is not None:
            break
        out.append(c)
    return out


def retire(year: PlanYear, first: list[Contribution]) -> PlanYear:
    """The plan-year after its first live settlements leave Redis for the ledger: their deltas move from
    the live list into `retired`; the accumulators and stays do not change."""
    if [c.settlement_id for c in first] != list(year.live[: len(first)]):
        raise InvariantViolation(f"{[c.settlement_id for c in first]} is not the start of {year.key}'s list")
    if any(c.stay_id is not None for c in first):
        raise InvariantViolation(f"a settlement of a stay cannot retire from {year.key}")
    retired = dict(year.retired)
    for c in first:
        retired = add(retired, c.deltas)
    return PlanYear(year.key, year.opening, year.live[len(first) :], year.accumulators, year.stays, retired)
