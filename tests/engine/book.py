"""One person's plan-years and personal account driven through the pure core the way the service drives
it (split on the plan-year's state, admit, correct), with no store at all: golden cases of a year of
bills read like the sequence a hospital sends."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import date

from gateway.engine import Rejected, Split, split
from gateway.engine.corrections import (
    Corrected,
    LiveSettlement,
    Money,
    Refund,
    RefundLine,
    Reverse,
    SettlementInputs,
    admit,
    correct,
)
from gateway.engine.model import Bill, Catalog, Institution, Person, PersonState, StayTotals
from gateway.engine.plan_year import Contribution, PlanKey, PlanYear, append, empty
from gateway.engine.policy import Corrections, Policy

from .builders import ON

_ids = itertools.count(1)


class Book:
    def __init__(
        self,
        person: Person,
        policies: Mapping[str, Policy],
        catalogs: Mapping[str, Catalog],
        balance_fen: int = 0,
    ) -> None:
        self.person = person
        self.policies = dict(policies)
        self.catalogs = dict(catalogs)
        self.balance_fen = balance_fen
        self.opening_balance_fen = balance_fen
        self.years: dict[PlanKey, PlanYear] = {}
        self.live: dict[str, LiveSettlement] = {}
        self.institutions: dict[str, Institution] = {}

    def key(self, on: date) -> PlanKey:
        enrolment = next(e for e in self.person.enrolments if e.in_force(on))
        return PlanKey(enrolment.region, enrolment.scheme.value, on.year)

    def year(self, on: date = ON) -> PlanYear:
        key = self.key(on)
        return self.years.get(key) or empty(key)

    def settle(self, bill: Bill, inst: Institution, on: date = ON) -> Split | Rejected:
        self.institutions[inst.code] = inst
        year = self.year(on)
        policy = self.policies[year.key.region]
        outcome = split(
            bill,
            policy,
            self.catalogs[inst.region],
            inst,
            self.person,
            year.state(self.balance_fen),
            on,
            year.stay(bill.stay_id),
        )
        if isinstance(outcome, Rejected):
            return outcome
        sid = f"S{next(_ids):06d}"
        admitted = admit(year, self.balance_fen, sid, outcome, bill.stay_id)
        if isinstance(admitted, Rejected):
            return admitted
        inputs = SettlementInputs(
            bill,
            on,
            inst.code,
            policy.version,
            self.catalogs[inst.region].version,
            "t",
            "t",
            self.balance_fen,
        )
        self.years[year.key] = admitted.year
        self.balance_fen = admitted.balance_fen
        self.live[sid] = LiveSettlement(admitted.contribution, inputs, Money.of(outcome))
        self.last_id = sid
        return outcome

    def ok(self, bill: Bill, inst: Institution, on: date = ON) -> Split:
        outcome = self.settle(bill, inst, on)
        assert isinstance(outcome, Split), outcome
        return outcome

    def resplit(self, inputs: SettlementInputs, state: PersonState, stay: StayTotals) -> Split | Rejected:
        inst = self.institutions[inputs.institution]
        policy = self.policies[self.key(inputs.on).region]
        return split(
            inputs.bill, policy, self.catalogs[inst.region], inst, self.person, state, inputs.on, stay
        )

    def correct(
        self, sid: str, action: Reverse | Refund, mode: Corrections | None = None
    ) -> Corrected | Rejected:
        s = self.live[sid]
        key = self.key(s.inputs.on)
        year = self.years[key]
        tail = [self.live[x] for x in year.live[year.live.index(sid) :]]
        policy = self.policies[key.region]
        decision = correct(year, self.balance_fen, tail, action, mode or policy.corrections, self.resplit)
        if isinstance(decision, Corrected):
            self.years[key] = decision.year
            self.balance_fen = decision.balance_fen
            for change in decision.changes:
                if change.kind == "reverse":
                    del self.live[change.settlement_id]
                else:
                    assert change.contribution is not None and change.inputs is not None
                    self.live[change.settlement_id] = LiveSettlement(
                        change.contribution, change.inputs, change.after
                    )
        return decision

    def reverse(self, sid: str, mode: Corrections | None = None) -> Corrected | Rejected:
        return self.correct(sid, Reverse(), mode)

    def refund(
        self, sid: str, *lines: tuple[int, int], mode: Corrections | None = None
    ) -> Corrected | Rejected:
        return self.correct(sid, Refund(tuple(RefundLine(n, q) for n, q in lines)), mode)

    def paid(self, key: PlanKey | None = None) -> Money:
        """What the live settlements pay, summed (of one plan-year, or of all)."""
        total = Money()
        for s in self.live.values():
            if key is None or self.key(s.inputs.on) == key:
                total = total.plus(s.money)
        return total

    def from_scratch(self, key: PlanKey) -> Money:
        """What the policy pays for the live settlements of a plan-year settled in order from nothing:
        the auditor's answer, which the book must always equal."""
        year = empty(key, self.years[key].opening)
        total = Money()
        for sid in self.years[key].live:
            s = self.live[sid]
            outcome = self.resplit(
                s.inputs, year.state(s.inputs.account_cap_fen), year.stay(s.contribution.stay_id)
            )
            assert isinstance(outcome, Split), outcome
            total = total.plus(Money.of(outcome))
            stay_id = s.contribution.stay_id
            year = append(
                year, Contribution(sid, dict(outcome.deltas), stay_id, outcome.stay if stay_id else None)
            )
        return total
