"""The auditor's arithmetic (TigerBeetle's auditor is the model): given what the store holds for one
plan-year, prove that it is what the policy allows, or say what differs. Pure; gateway/audit.py reads the
store and the ledger and calls it.

For a plan-year, in the order settled:
- every live settlement split again from its recorded inputs, on the fold of the ones before it, gives
  exactly what it records: what it pays (per fund, account, cash) and what it adds to the plan-year;
- the accumulators and the stays are the fold of those contributions on the opening (and on what
  settlements retired from Redis before them added: gateway/engine/plan_year.retire);
- no capped counter of the plan is beyond its annual maximum."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.engine.corrections import LiveSettlement, Money, Resplit
from gateway.engine.plan_year import Contribution, PlanYear, append, empty
from gateway.engine.result import Rejected


def audit_plan_year(
    year: PlanYear,
    settlements: Sequence[LiveSettlement],
    resplit: Resplit,
    caps: Iterable[tuple[str, int]] = (),
) -> list[str]:
    """What differs, one line each; empty when the plan-year is right."""
    out: list[str] = []
    ids = [s.settlement_id for s in settlements]
    if ids != list(year.live):
        return [f"{year.key}: live list {list(year.live)} but settlements {ids}"]
    fold = empty(year.key, year.base)  # the opening and what retired settlements added
    for s in settlements:
        state = fold.state(s.inputs.account_cap_fen)
        outcome = resplit(s.inputs, state, fold.stay(s.contribution.stay_id))
        if isinstance(outcome, Rejected):
            out.append(f"{s.settlement_id}: split again, it is refused: {outcome.code.name} {outcome.reason}")
            fold = append(fold, s.contribution)
            continue
        again = Money.of(outcome)
        if again != s.money:
            out.append(f"{s.settlement_id}: records {describe(s.money)}, split again {describe(again)}")
        stay_id = s.contribution.stay_id
        expected = Contribution(
            s.settlement_id, dict(outcome.deltas), stay_id, outcome.stay if stay_id else None
        )
        if expected != s.contribution:
            out.append(
                f"{s.settlement_id}: adds {dict(s.contribution.deltas)}, split again {dict(outcome.deltas)}"
            )
        fold = append(fold, s.contribution)
    if dict(fold.accumulators) != dict(year.accumulators):
        out.append(f"{year.key}: accumulators {diff(year.accumulators, fold.accumulators)} (stored vs fold)")
    if dict(fold.stays) != dict(year.stays):
        out.append(f"{year.key}: stays {dict(year.stays)} but the fold gives {dict(fold.stays)}")
    for key, maximum in caps:
        if year.accumulators.get(key, 0) > maximum:
            out.append(f"{year.key}: {key} = {year.accumulators[key]} beyond its annual maximum {maximum}")
    return out


def describe(m: Money) -> str:
    funds = " ".join(f"{code} {v}" for code, v in sorted(m.funds.items()))
    return f"total {m.total_fen} funds [{funds}] account {m.account_fen} cash {m.cash_fen}"


def diff(stored: Mapping[str, int], derived: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    names = sorted(set(stored) | set(derived))
    return {n: (stored.get(n, 0), derived.get(n, 0)) for n in names if stored.get(n, 0) != derived.get(n, 0)}


def audit_account(opening_fen: int, balance_fen: int, live: Iterable[LiveSettlement]) -> list[str]:
    """The personal account is its opening balance minus what the live settlements pay from it (a
    reversal or a refund gave back what it takes back)."""
    spent = sum(s.money.account_fen for s in live)
    if balance_fen != opening_fen - spent:
        left = opening_fen - spent
        return [f"personal account {balance_fen}, but {opening_fen} opening - {spent} paid = {left}"]
    if balance_fen < 0:
        return [f"personal account {balance_fen} is negative"]
    return []


def audit_ledger(
    owed: Mapping[str, Money], booked: Mapping[str, Money], in_flight: Mapping[str, Money]
) -> list[str]:
    """The ledger holds what the settlements pay: for every settlement, what the store says it pays now
    (nothing once reversed) equals the sum of its ledger entries plus its events not yet booked."""
    out = []
    for sid in sorted(set(owed) | set(booked) | set(in_flight)):
        expected = owed.get(sid, Money())
        got = booked.get(sid, Money()).plus(in_flight.get(sid, Money()))
        if got != expected:
            out.append(f"{sid}: the store says {describe(expected)}, ledger and queue hold {describe(got)}")
    return out
