"""A hypothesis state machine over a year of bills through the service layer (two gateway processes on
one in-memory store): settle, resend, reuse of a message id, partial refund, reverse (latest and not),
a reversal by message id before its Settle, interim and final parts of a stay, a plan change mid-year,
two institutions, concurrent commits. After every step the auditor (gateway.audit) proves, for the
persons the step touched, that each plan-year's live settlements pay exactly what a from-scratch
re-adjudication in order pays, that the accumulators are their fold, that no capped counter is beyond
its maximum, that the personal account is its opening minus what the live settlements take, and that
the posting events add up to what each settlement pays now.

Chongqing's policy refuses corrections that later settlements stand on; the Jinan person's policy
re-adjudicates them, so both paths run. The same machine runs a few sequences on real Redis in
tests/gateway/test_year_on_redis.py."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from adapters.memory_store import MemoryStore
from gateway.audit import Report, audit_person, compare_ledger
from gateway.codec import Envelope, PersonRef
from gateway.correction_service import CorrectionService, Target
from gateway.engine.corrections import RefundLine
from gateway.engine.model import (
    Bill,
    BillLine,
    Enrolment,
    EnrolmentStatus,
    PersonType,
    Scheme,
    TierChange,
    VisitType,
)
from gateway.engine.policy import Corrections
from gateway.errors import Rejected
from gateway.protos import pb
from gateway.service import Context, SettlementService
from rules_cache.static_data import FixedStatic

from ..engine.builders import CQ, JN, catalog, entry, institution, person, policy

ZONE = ZoneInfo("Asia/Shanghai")
CQ_HIGH, CQ_LOW = institution(CQ, "500107", 3), institution(CQ, "500108", 1)
JN_MID, JN_HIGH = institution(JN, "370126", 2), institution(JN, "370102", 3)
ITEMS = [
    entry("T1", "A", "item"),
    entry("D1", "B", "drug", selfpay_bp=1_000, quantity_per_visit_max=10),
    entry("M1", "B", "material", price_limit_fen=50_000),
    entry("C9", "C"),
]
CATALOGS = [catalog(CQ, *ITEMS), catalog(JN, *ITEMS)]
JINAN = dataclasses.replace(policy(JN), version="jn-readjudicate", corrections=Corrections.READJUDICATE)


def people() -> dict[str, Any]:
    base = person(CQ, "500107")
    employee = dataclasses.replace(base.enrolments[0], valid_to=date(2026, 6, 30))
    resident = Enrolment(
        CQ, "500107", Scheme.RESIDENT, PersonType.ADULT, EnrolmentStatus.ACTIVE, date(2026, 7, 1), None,
        (TierChange(1, date(2026, 7, 1)),),
    )  # fmt: skip
    changing = dataclasses.replace(base, person_id="P-CQ", card_no="CARD-CQ", id_number="ID-CQ",
                                   enrolments=(employee, resident))  # fmt: skip
    steady = dataclasses.replace(base, person_id="P-CQ2", card_no="CARD-CQ2", id_number="ID-CQ2")
    jinan = dataclasses.replace(
        person(JN, "370126", "resident", person_type="adult"),
        person_id="P-JN", card_no="CARD-JN", id_number="ID-JN", tags=frozenset({"low_income"}),
    )  # fmt: skip
    return {"P-CQ": changing, "P-CQ2": steady, "P-JN": jinan}


PERSONS = people()
HOME = {"P-CQ": (CQ_HIGH, CQ_LOW), "P-CQ2": (CQ_HIGH, CQ_LOW), "P-JN": (JN_MID, JN_HIGH)}
BALANCES = {"P-CQ": 300_000, "P-CQ2": 80_000, "P-JN": 0}

lines = st.lists(
    st.tuples(
        st.sampled_from(["T1", "D1", "M1", "C9"]),
        st.sampled_from([0, 350, 12_000, 64_000, 450_000, 2_600_000]),
        st.integers(1, 12),
    ),
    min_size=1,
    max_size=4,
)


@dataclasses.dataclass
class Sent:
    person: str
    env: Envelope
    bill: Bill
    digest: str
    answer: bytes = b""
    settlement_id: str = ""


class Year(RuleBasedStateMachine):
    def make_store(self) -> Any:
        store = MemoryStore()
        store.yield_between_read_and_commit = True
        for pid, p in PERSONS.items():
            store.add_person(p, BALANCES[pid])
        return store

    async def everything(self) -> tuple[list[Any], list[Any]]:
        """Every settlement record and every posting event, for the ledger comparison."""
        return list(self.store.stored.values()), list(self.store.events)

    @initialize()
    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = self.make_store()
        static = FixedStatic(
            [policy(CQ), JINAN], CATALOGS, {i.code: i for i in (CQ_HIGH, CQ_LOW, JN_MID, JN_HIGH)}
        )
        self.day = date(2026, 1, 5)
        self.contexts = [Context(self.store, static, self.now) for _ in range(2)]  # two gateway processes
        self.services = [SettlementService(c) for c in self.contexts]
        self.corrections = [CorrectionService(c) for c in self.contexts]
        self.static = static
        self.sent: list[Sent] = []
        self.counter = 0
        self.touched: set[str] = set()
        self.open_stays: dict[str, str] = {}

    def teardown(self) -> None:
        self.loop.close()

    def now(self) -> datetime:
        return datetime(self.day.year, self.day.month, self.day.day, 10, 0, tzinfo=ZONE)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def envelope(self, inst: str) -> Envelope:
        self.counter += 1
        return Envelope(inst, "T1", "op", f"{inst}{self.counter:08d}")

    def bill(self, pid: str, raw: list[tuple[str, int, int]], inpatient: bool, part: int) -> Bill:
        stay_id, interim = None, False
        if inpatient and part:
            stay_id = self.open_stays.setdefault(pid, f"ST{self.counter}")
            interim = part == 1  # 1: an interim part, 2: the final part
        visit = VisitType.INPATIENT if inpatient else VisitType.OUTPATIENT
        return Bill(visit, tuple(BillLine(c, p, q, i + 1) for i, (c, p, q) in enumerate(raw)),
                    stay_id=stay_id, interim=interim)  # fmt: skip

    def settle_one(self, which: int, sent: Sent) -> Any:
        return self.services[which].settle(
            sent.env, PersonRef(PERSONS[sent.person].card_no, None), sent.bill, sent.digest
        )

    # ---------------------------------------------------------------- rules

    @rule(
        pid=st.sampled_from(sorted(PERSONS)),
        where=st.integers(0, 1),
        raw=lines,
        inpatient=st.booleans(),
        part=st.integers(0, 2),
        which=st.integers(0, 1),
    )
    def settle(
        self, pid: str, where: int, raw: list[tuple[str, int, int]], inpatient: bool, part: int, which: int
    ) -> None:
        inst = HOME[pid][where]
        if pid == "P-JN" and not inpatient:
            inst = JN_MID
        sent = Sent(pid, self.envelope(inst.code), self.bill(pid, raw, inpatient, part), f"h{self.counter}")
        self.touched.add(pid)
        try:
            settled = self.run(self.settle_one(which, sent))
        except Rejected as exc:
            assert (
                exc.code.name in {"STAY_CLOSED", "PLAN_YEAR_FULL", "NOT_ENROLLED"} or exc.code.value < 400
            ), exc
            event(f"settle refused: {exc.code.name}")
            return
        event("settled" + (" a stay part" if sent.bill.stay_id else ""))
        sent.answer, sent.settlement_id = settled.response, settled.settlement_id
        if sent.bill.stay_id and not sent.bill.interim:
            self.open_stays.pop(pid, None)
        self.sent.append(sent)

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), which=st.integers(0, 1))
    def resend(self, data: st.DataObject, which: int) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        again = self.run(self.settle_one(which, sent))
        assert again.response == sent.answer and again.duplicate, (
            "a resend gets the first answer, byte for byte"
        )

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def reuse_for_another_person(self, data: st.DataObject) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        other = next(p for p in sorted(PERSONS) if p != sent.person)
        self.touched.add(other)
        try:
            self.run(
                self.services[0].settle(sent.env, PersonRef(PERSONS[other].card_no, None), sent.bill, "x")
            )
        except Rejected as exc:
            assert exc.code.name == "MESSAGE_ID_REUSED", exc
        else:
            raise AssertionError("a message id settled twice")

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), which=st.integers(0, 1))
    def reverse(self, data: st.DataObject, which: int) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        self.touched.add(sent.person)
        target = Target(sent.settlement_id, "", None)
        env = self.envelope(sent.env.institution_code)
        try:
            answer = pb.ReverseResponse.FromString(
                self.run(self.corrections[which].reverse(env, target, f"r{self.counter}"))
            )
        except Rejected as exc:
            assert exc.code.name in {"LATER_SETTLEMENTS_EXIST", "READJUDICATION_REJECTED"}, exc
            assert sent.person != "P-JN" or exc.code.name != "LATER_SETTLEMENTS_EXIST", "Jinan re-adjudicates"
            event(f"reversal refused: {exc.code.name}")
            return
        assert answer.settlement_id == sent.settlement_id
        event(f"reversed, {len(answer.adjustments)} adjusted" if answer.adjustments else "reversed")
        if sent.bill.stay_id:
            self.open_stays.setdefault(sent.person, sent.bill.stay_id)

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), units=st.integers(1, 3))
    def refund(self, data: st.DataObject, units: int) -> None:
        sent = data.draw(st.sampled_from(self.sent))
        self.touched.add(sent.person)
        line = data.draw(st.sampled_from(sent.bill.lines))
        env = self.envelope(sent.env.institution_code)
        try:
            target = Target(sent.settlement_id, "", None)
            lines = (RefundLine(line.line_no, units),)
            self.run(self.corrections[0].refund(env, target, lines, f"f{self.counter}"))
        except Rejected as exc:
            allowed = {
                "LATER_SETTLEMENTS_EXIST", "REFUND_INVALID", "REFUND_WHOLE_BILL", "SETTLEMENT_REVERSED",
                "READJUDICATION_REJECTED",
            }  # fmt: skip
            assert exc.code.name in allowed, exc
            event(f"refund refused: {exc.code.name}")
            return
        event("refunded")

    @rule(pid=st.sampled_from(sorted(PERSONS)), raw=lines)
    def reversal_before_its_settle(self, pid: str, raw: list[tuple[str, int, int]]) -> None:
        inst = HOME[pid][0]
        sent = Sent(pid, self.envelope(inst.code), self.bill(pid, raw, False, 0), f"h{self.counter}")
        self.touched.add(pid)
        target = Target("", sent.env.message_id, PersonRef(PERSONS[pid].card_no, None))
        answer = pb.ReverseResponse.FromString(
            self.run(self.corrections[1].reverse(self.envelope(inst.code), target, "v"))
        )
        assert answer.nothing_settled
        with pytest.raises(Rejected) as info:
            self.run(self.settle_one(0, sent))
        assert info.value.code.name == "MESSAGE_ID_VOID"

    @rule(raw_a=lines, raw_b=lines)
    def two_at_once(self, raw_a: list[tuple[str, int, int]], raw_b: list[tuple[str, int, int]]) -> None:
        # one person, two institutions, two gateway processes, at the same moment
        a = Sent("P-CQ2", self.envelope(CQ_HIGH.code), self.bill("P-CQ2", raw_a, True, 0), f"h{self.counter}")
        b = Sent("P-CQ2", self.envelope(CQ_LOW.code), self.bill("P-CQ2", raw_b, False, 0), f"h{self.counter}")
        self.touched.add("P-CQ2")

        async def both() -> list[Any]:
            return await asyncio.gather(self.settle_one(0, a), self.settle_one(1, b), return_exceptions=True)

        results = self.run(both())
        for sent, result in zip((a, b), results, strict=True):
            if isinstance(result, Rejected):
                continue
            assert not isinstance(result, BaseException), result
            sent.answer, sent.settlement_id = result.response, result.settlement_id
            self.sent.append(sent)

    @rule(amount=st.sampled_from([500_000, 1_500_000, 3_000_000, 9_000_000]))
    def a_large_jinan_stay(self, amount: int) -> None:
        # large enough to cross cost bands and reach critical illness insurance: a reversal of an
        # earlier one then changes what later ones pay (Jinan's policy re-adjudicates them)
        sent = Sent("P-JN", self.envelope(JN_MID.code), self.bill("P-JN", [("T1", amount, 1)], True, 0), "j")
        self.touched.add("P-JN")
        settled = self.run(self.settle_one(0, sent))
        sent.answer, sent.settlement_id = settled.response, settled.settlement_id
        self.sent.append(sent)

    @rule(days=st.integers(1, 60))
    def time_passes(self, days: int) -> None:
        self.day = min(self.day + timedelta(days=days), date(2026, 12, 31))

    # ---------------------------------------------------------------- what must always hold

    @invariant()
    def the_auditor_finds_nothing(self) -> None:
        if not hasattr(self, "store"):
            return
        report = Report()
        for pid in sorted(self.touched):
            self.run(audit_person(self.store, self.static, pid, [2026], report))
        settlements, events = self.run(self.everything())
        compare_ledger(settlements, {}, events, report)
        assert report.differences == [], report.lines()
        self.touched.clear()


Year.TestCase.settings = settings(
    max_examples=2_000,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_a_year_of_bills = Year.TestCase
