"""Decisions on a plan-year: admit a settlement, reverse one, refund part of one, and what happens to
the settlements that were computed after a corrected one. Pure: the caller passes the plan-year, the
settlements concerned and a `resplit` function bound to the static data each settlement recorded.

Money already paid is never edited; a correction is a new entry (corrections are differences):
- reversing a settlement books the negative mirror of what it pays now;
- a partial refund (退费) re-splits the rest of its bill in place, on the plan-year as it was before it,
  and books the difference;
- a later settlement of the same plan-year stood on accumulators the correction removes: by default the
  correction is refused and names them; a policy may instead re-adjudicate them in order from their
  recorded inputs, each difference booked as an adjustment.

Whatever the sequence, the live settlements of a plan-year then pay what the policy allows for them
settled in order. The personal account is never charged after the fact: a re-split may pay less from it
(the difference goes back to the account), never more; what the person owes more is cash the
institution collects."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal, NamedTuple

from gateway.engine.codes import Rejection
from gateway.engine.model import Bill, BillLine, PersonState, StayTotals
from gateway.engine.money import InvariantViolation
from gateway.engine.plan_year import LIVE_SETTLEMENTS_MAX, Contribution, PlanYear, append, before
from gateway.engine.policy import Corrections
from gateway.engine.result import Rejected, Split, SplitOutcome


@dataclass(frozen=True, slots=True)
class Money:
    """What a settlement pays, or a signed difference of two such. Funds by fund code."""

    total_fen: int = 0
    funds: Mapping[str, int] = field(default_factory=dict)
    account_fen: int = 0
    cash_fen: int = 0

    @staticmethod
    def of(split: Split) -> Money:
        funds: dict[str, int] = {}
        for f in split.funds:
            if f.amount_fen:
                funds[f.fund_code] = funds.get(f.fund_code, 0) + f.amount_fen
        # under a per-disease payment the institution is paid the quota, not the bill: the ledger books
        # what the fund and the person pay it (the bill's cost and its share stay on the settlement)
        return Money(split.total_fen - split.institution_fen, funds, split.account_fen, split.cash_fen)

    @property
    def fund_total_fen(self) -> int:
        return sum(self.funds.values())

    def minus(self, other: Money) -> Money:
        codes = sorted(set(self.funds) | set(other.funds))
        funds = {c: self.funds.get(c, 0) - other.funds.get(c, 0) for c in codes}
        return Money(
            self.total_fen - other.total_fen,
            {c: v for c, v in funds.items() if v},
            self.account_fen - other.account_fen,
            self.cash_fen - other.cash_fen,
        )

    def plus(self, other: Money) -> Money:
        return self.minus(Money().minus(other))

    @property
    def is_zero(self) -> bool:
        return not (self.total_fen or self.account_fen or self.cash_fen or any(self.funds.values()))


ZERO = Money()


@dataclass(frozen=True, slots=True)
class SettlementInputs:
    """What it takes to split a settlement again, exactly: its bill, its date of care, where, the
    versions of the rules and of the person's record it was split with, and the personal account
    balance it could use."""

    bill: Bill
    on: date
    institution: str
    policy_version: str
    catalog_version: str
    institutions_version: str
    person_digest: str
    account_cap_fen: int


@dataclass(frozen=True, slots=True)
class LiveSettlement:
    contribution: Contribution
    inputs: SettlementInputs
    money: Money  # what it pays now (after any refund or adjustment)

    @property
    def settlement_id(self) -> str:
        return self.contribution.settlement_id


Resplit = Callable[[SettlementInputs, PersonState, StayTotals], SplitOutcome]
Kind = Literal["reverse", "refund", "adjust"]


@dataclass(frozen=True, slots=True)
class Change:
    """A settlement whose payment (or contribution to its plan-year) changes."""

    settlement_id: str
    kind: Kind
    before: Money
    after: Money
    split: Split | None = None  # the new split; None when reversed
    contribution: Contribution | None = None  # the new one; None when reversed
    inputs: SettlementInputs | None = None  # the new inputs (a refunded bill, a new account cap)

    @property
    def difference(self) -> Money:
        return self.after.minus(self.before)


@dataclass(frozen=True, slots=True)
class Admitted:
    year: PlanYear
    balance_fen: int
    contribution: Contribution


@dataclass(frozen=True, slots=True)
class Corrected:
    year: PlanYear
    balance_fen: int
    changes: tuple[Change, ...]  # the corrected settlement first, then each later one that changed


class Reverse(NamedTuple):
    pass


class RefundLine(NamedTuple):
    line_no: int
    quantity: int  # units refunded, in the catalog's dispensing unit


class Refund(NamedTuple):
    lines: tuple[RefundLine, ...]


def admit(
    year: PlanYear, balance_fen: int, settlement_id: str, split: Split, stay_id: str | None
) -> Admitted | Rejected:
    """A new settlement at the end of its plan-year."""
    if len(year.live) >= LIVE_SETTLEMENTS_MAX:
        return Rejected(
            Rejection.PLAN_YEAR_FULL, f"plan-year {year.key} already holds {LIVE_SETTLEMENTS_MAX} settlements"
        )
    if split.account_fen > balance_fen:
        raise InvariantViolation("the account pays more than its balance")
    c = Contribution(settlement_id, dict(split.deltas), stay_id, split.stay if stay_id else None)
    return Admitted(append(year, c), balance_fen - split.account_fen, c)


def refunded(bill: Bill, lines: Sequence[RefundLine]) -> Bill | Rejected:
    """The bill without the refunded units. Line numbers stay what they were."""
    by_no = {line.line_no: line for line in bill.lines}
    take: dict[int, int] = {}
    for r in lines:
        line = by_no.get(r.line_no)
        if line is None:
            return Rejected(Rejection.REFUND_INVALID, f"the settlement has no line {r.line_no}", r.line_no)
        take[r.line_no] = take.get(r.line_no, 0) + r.quantity
        if r.quantity < 1 or take[r.line_no] > line.quantity:
            return Rejected(
                Rejection.REFUND_INVALID,
                f"line {r.line_no}: {take[r.line_no]} units refunded of the {line.quantity} it has",
                r.line_no,
            )
    rest = tuple(
        BillLine(line.code, line.unit_price_fen, line.quantity - take.get(line.line_no, 0), line.line_no)
        for line in bill.lines
        if line.quantity > take.get(line.line_no, 0)
    )
    if not rest:
        return Rejected(Rejection.REFUND_WHOLE_BILL, "every line is refunded: reverse the settlement instead")
    return replace(bill, lines=rest)


def later_ones(tail: Sequence[LiveSettlement]) -> str:
    return ", ".join(f"{s.settlement_id} ({s.inputs.institution}, {s.inputs.on})" for s in tail)


def correct(
    year: PlanYear,
    balance_fen: int,
    tail: Sequence[LiveSettlement],
    action: Reverse | Refund,
    mode: Corrections,
    resplit: Resplit,
) -> Corrected | Rejected:
    """Correct `tail[0]`; `tail[1:]` are the live settlements after it in its plan-year, in order."""
    target, later = tail[0], tail[1:]
    if later and mode is Corrections.REFUSE:
        return Rejected(
            Rejection.LATER_SETTLEMENTS_EXIST,
            f"{target.settlement_id} cannot be corrected while later settlements of plan-year {year.key}"
            f" were computed on it; reverse these first, latest first: {later_ones(later)}",
        )
    base = before(year, [s.contribution for s in tail])
    changes: list[Change] = []
    if isinstance(action, Refund):
        bill = refunded(target.inputs.bill, action.lines)
        if isinstance(bill, Rejected):
            return bill
        inputs = replace(target.inputs, bill=bill, account_cap_fen=target.money.account_fen)
        outcome = resplit(inputs, base.state(inputs.account_cap_fen), base.stay(target.contribution.stay_id))
        if isinstance(outcome, Rejected):
            return Rejected(Rejection.REFUND_INVALID, f"the rest of the bill is refused: {outcome.reason}")
        change, base = resettled(base, target, inputs, outcome, "refund")
        changes.append(change)
    else:
        changes.append(Change(target.settlement_id, "reverse", target.money, ZERO))
    for s in later:
        inputs = replace(s.inputs, account_cap_fen=s.money.account_fen)
        outcome = resplit(inputs, base.state(inputs.account_cap_fen), base.stay(s.contribution.stay_id))
        if isinstance(outcome, Rejected):
            return Rejected(
                Rejection.READJUDICATION_REJECTED,
                f"{s.settlement_id} would be refused on re-adjudication: {outcome.reason}",
            )
        change, base = resettled(base, s, inputs, outcome, "adjust")
        if change.difference.is_zero and change.contribution == s.contribution:
            continue  # nothing it pays or adds up to has changed
        changes.append(change)
    balance = balance_fen + sum(c.before.account_fen - c.after.account_fen for c in changes)
    return Corrected(base, balance, tuple(changes))


def resettled(
    base: PlanYear, s: LiveSettlement, inputs: SettlementInputs, split: Split, kind: Kind
) -> tuple[Change, PlanYear]:
    after = Money.of(split)
    if after.account_fen > s.money.account_fen:
        raise InvariantViolation(f"{s.settlement_id}: a re-split may not charge the account more")
    stay_id = s.contribution.stay_id
    c = Contribution(s.settlement_id, dict(split.deltas), stay_id, split.stay if stay_id else None)
    return Change(s.settlement_id, kind, s.money, after, split, c, inputs), append(base, c)


# ---------------------------------------------------------------- idempotency

Seen = Literal["new", "resend", "reused", "void"]


class Earlier(NamedTuple):
    """What was recorded before under one (institution, message id)."""

    kind: str  # settle | reverse | refund | void (a reversal by this message id came first)
    payload_hash: str
    person_id: str
    settlement_id: str


def classify(earlier: Earlier | None, kind: str, payload_hash: str, person_id: str) -> Seen:
    """A message id is the terminal's idempotency key across every person and every kind of request:
    the same request again is a resend (the original answer, byte for byte); anything else under the
    same key is a reuse, never a success."""
    if earlier is None:
        return "new"
    if earlier.kind == "void":
        return "void" if kind == "settle" else "reused"
    if earlier.kind == kind and earlier.payload_hash == payload_hash and earlier.person_id == person_id:
        return "resend"
    return "reused"
