"""The service layer: eligibility, pre-settle and settle (corrections: gateway/correction_service.py).
It takes static data from the in-process snapshot, reads the person in one store round trip, runs the
pure engine and the pure plan-year decision, and commits what they decided in one more. Outcomes a
client can cause are raised as gateway.errors values; store trouble as Unavailable. No gRPC here: the
servicer maps these to status codes."""

from __future__ import annotations

import asyncio
import random
import secrets
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, Protocol

from adapters import redis_keys as keys
from adapters.ledger.archive import ArchiveUnavailable
from adapters.settlement_store import (
    Commit,
    CommitOutcome,
    MessageRecord,
    NewSettlement,
    PersonSnapshot,
    SettlementArchive,
    SettlementStore,
    StoredSettlement,
    StoreRefused,
)
from gateway import codec, logs
from gateway.codec import Envelope, PersonRef
from gateway.edge import privacy
from gateway.engine import Rejected as EngineRejected
from gateway.engine import Rejection, Split, split
from gateway.engine.audit_rules import AuditFlag
from gateway.engine.corrections import LiveSettlement, Money, SettlementInputs, admit, classify
from gateway.engine.eligibility import covered, tier_in_force
from gateway.engine.model import Bill, Enrolment, Institution, StayTotals
from gateway.engine.plan_year import PLAN_YEARS_KEPT, PlanKey, PlanYear, oldest_plan_year
from gateway.engine.policy import CapOn, Policy, StayDate
from gateway.errors import Rejected, Unavailable
from gateway.protos import pb
from rules_cache.static_data import StaticSnapshot
from telemetry import metrics

CARD_REJECTIONS = {
    "lost": Rejection.CARD_LOST,
    "frozen": Rejection.CARD_FROZEN,
    "cancelled": Rejection.CARD_CANCELLED,
}


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    commit_retries_max: int = 8  # recompute-and-commit attempts when another commit got in first
    conflict_backoff_ms: float = 2.0  # jittered wait after a conflict, times the attempt number


@dataclass(frozen=True, slots=True)
class Settled:
    response: bytes  # SettleResponse bytes: what the terminal gets, byte for byte on every retry
    duplicate: bool
    settlement_id: str
    split: Split | None  # None for a duplicate (the original split is in the response)


@dataclass(frozen=True, slots=True)
class Care:
    """The date of care of a bill and what it chooses: the enrolment in force and the policy version."""

    day: date
    enrolment: Enrolment
    policy: Policy


@dataclass(frozen=True, slots=True)
class Computed:
    split: Split
    enrolment: Enrolment
    year: PlanYear  # the plan-year the bill settles in, as read
    stay_before: StayTotals


class StaticData(Protocol):
    """The static data a service reads: the snapshot in force, and any published version by name
    (rules_cache.static_data.StaticCache; FixedStatic in unit tests)."""

    @property
    def snapshot(self) -> StaticSnapshot: ...

    async def load(self, kind: str, region: str, version: str) -> Any: ...


class Context:
    """What the settlement and correction services share: the store, the static data, the clock, and
    one lock per person per process (concurrent bills for one person queue here instead of spinning on
    the store's compare-and-set; other processes are kept honest by the compare-and-set)."""

    def __init__(
        self,
        store: SettlementStore,
        static: StaticData,
        now: Callable[[], datetime],
        limits: ServiceLimits = ServiceLimits(),
        archive: SettlementArchive | None = None,
        plan_years_kept: int = PLAN_YEARS_KEPT,
    ) -> None:
        self.store = store
        self.static = static
        self.now = now
        self.limits = limits
        self.archive = archive  # None: no ledger configured; what left Redis is not found
        self.plan_years_kept = plan_years_kept
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def person_lock(self, person_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(person_id, asyncio.Lock())
        async with lock:
            yield

    async def backoff(self, attempt: int) -> None:
        """Another process committed for this person since our read: wait a little (jittered, so two
        gateways do not keep colliding), then read again and recompute."""
        metrics.COMMIT_CONFLICTS.inc()
        await asyncio.sleep(random.uniform(0, self.limits.conflict_backoff_ms / 1000 * (attempt + 1)))

    def institution(self, snap: StaticSnapshot, code: str) -> Institution:
        inst = snap.institutions.get(code)
        if inst is None:
            raise Rejected(Rejection.INSTITUTION_UNKNOWN, f"institution {code} is not in the registry")
        return inst

    async def person_id(self, ref: PersonRef) -> str:
        pid = await self.store.person_id_for(ref.card_no, ref.id_number)
        if pid is None:
            what = f"card {ref.card_no}" if ref.card_no else "id number"
            raise Rejected(Rejection.PERSON_NOT_FOUND, f"no insured person for this {what}")
        return pid

    async def read_person(
        self, pid: str, ref: PersonRef | None, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot:
        try:
            snapshot = await self.store.read_person(pid, year, message)
        except StoreRefused as exc:
            logs.note(store_refused=str(exc))
            raise Unavailable(f"the settlement store refused the read: {exc}") from exc
        if snapshot is None:
            raise Rejected(Rejection.PERSON_NOT_FOUND, f"person {pid} has no record")
        if snapshot.earlier is None and ref is not None and ref.card_no and snapshot.card_status != "normal":
            raise Rejected(CARD_REJECTIONS[snapshot.card_status], f"card is {snapshot.card_status}")
        return snapshot

    async def settlement(self, settlement_id: str) -> StoredSettlement | None:
        """From Redis, or from the ledger once retention has moved it there."""
        stored = await self.store.settlement(settlement_id)
        if stored is not None or self.archive is None:
            return stored
        try:
            archived = await self.archive.settlement(settlement_id)
        except ArchiveUnavailable as exc:
            raise Unavailable(
                f"the ledger, which keeps settlements of earlier plan-years, is down: {exc}"
            ) from exc
        return replace(archived, archived=True) if archived is not None else None

    async def settled_by(self, institution: str, message_id: str) -> str | None:
        """The settlement the ledger booked for a message id whose record has left Redis (a record
        expires idempotency_retention_days after its last use)."""
        if self.archive is None:
            return None
        try:
            return await self.archive.settled_by(institution, message_id)
        except ArchiveUnavailable as exc:
            raise Unavailable(f"the ledger, which keeps older message ids, is down: {exc}") from exc

    async def commit(self, commit: Commit) -> CommitOutcome:
        """The commit runs to its end even when the caller's deadline expires meanwhile: what the store
        did is then known here (and audited), even if the terminal only learns UNAVAILABLE."""
        try:
            return await asyncio.shield(self.store.commit(commit))
        except StoreRefused as exc:
            logs.note(store_refused=str(exc))
            raise Unavailable(f"the settlement store refused the write, nothing was written: {exc}") from exc


def home_enrolment(snapshot: PersonSnapshot, on: date) -> Enrolment:
    for enrolment in snapshot.person.enrolments:
        if enrolment.in_force(on):
            return enrolment
    raise Rejected(Rejection.NOT_ENROLLED, f"no enrolment in force on {on}")


def care_of(snap: StaticSnapshot, person: PersonSnapshot, bill: Bill, day: date) -> Care:
    """The date of care (the visit's; a stay's discharge, or admission where the policy says so), the
    enrolment in force then, and the policy version in force then."""
    enrolment = home_enrolment(person, day)
    policy = policy_on(snap, enrolment.region, day)
    if policy.stay_date is StayDate.ADMISSION and bill.admitted_on is not None and bill.admitted_on != day:
        day = bill.admitted_on
        enrolment = home_enrolment(person, day)
        policy = policy_on(snap, enrolment.region, day)
    return Care(day, enrolment, policy)


def policy_on(snap: StaticSnapshot, region: str, day: date) -> Policy:
    staged = snap.policies.get(region)
    if not staged:
        raise Rejected(Rejection.REGION_NOT_SERVED, f"no policy of region {region} is loaded")
    policy = snap.policy(region, day)
    if policy is None:
        versions = ", ".join(
            f"{p.version} from {p.effective_from}" + (f" to {p.effective_to}" if p.effective_to else "")
            for p in staged
        )
        raise Rejected(
            Rejection.POLICY_NOT_IN_FORCE,
            f"no version of region {region}'s policy is in force on {day} ({versions})",
        )
    return policy


def plan_key(enrolment: Enrolment, on: date) -> PlanKey:
    return PlanKey(enrolment.region, enrolment.scheme.value, on.year)


class SettlementService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def static(self) -> StaticData:
        return self.ctx.static

    def compute(
        self, snap: StaticSnapshot, inst: Institution, person: PersonSnapshot, bill: Bill, care: Care
    ) -> Computed:
        catalog = snap.catalogs.get(inst.region)
        if catalog is None:
            raise Rejected(Rejection.REGION_NOT_SERVED, f"no catalog of {inst.region} is loaded")
        on = care.day
        oldest = oldest_plan_year(self.ctx.now().year, self.ctx.plan_years_kept)
        if on.year < oldest:
            raise Rejected(
                Rejection.PLAN_YEAR_CLOSED,
                f"the date of care {on} is in plan-year {on.year}; the gateway settles {oldest} and later",
            )
        year = person.plan_year(plan_key(care.enrolment, on))
        stay = year.stay(bill.stay_id)
        state = year.state(person.balance_fen)
        outcome = split(bill, care.policy, catalog, inst, person.person, state, on, stay)
        if isinstance(outcome, EngineRejected):
            count_audit_flags(care.policy.region, outcome.audit_flags, "blocked")
            raise Rejected(outcome.code, outcome.reason, outcome.line_no)
        return Computed(outcome, care.enrolment, year, stay)

    async def read_for(
        self, snap: StaticSnapshot, pid: str, ref: PersonRef, bill: Bill, message: tuple[str, str] | None
    ) -> tuple[PersonSnapshot, Care]:
        """The person with the plan-years of the bill's date of care, and that date. A stay across
        1 January under a policy that settles stays by their admission date needs a second read (the
        plan-years of the admission's year); every other bill, one."""
        first = bill.care_date(by_admission=False) or self.ctx.now().date()
        person = await self.ctx.read_person(pid, ref, first.year, message)
        care = care_of(snap, person, bill, first)
        if care.day.year != first.year:
            person = await self.ctx.read_person(pid, ref, care.day.year, message)
        return person, care

    def encode(self, c: Computed, bill: Bill) -> Any:
        after = c.stay_before.plus(c.split.stay) if c.split.stay is not None else None
        return codec.encode_split(
            c.split,
            c.enrolment.region,
            c.enrolment.district,
            c.year.key.year,
            bill.stay_id,
            after,
            bill.interim,
        )

    async def presettle(self, env: Envelope, ref: PersonRef, bill: Bill) -> Any:
        snap = self.static.snapshot
        inst = self.ctx.institution(snap, env.institution_code)
        pid = await self.ctx.person_id(ref)
        person, care = await self.read_for(snap, pid, ref, bill, None)
        return pb.PreSettleResponse(split=self.encode(self.compute(snap, inst, person, bill, care), bill))

    async def settle(self, env: Envelope, ref: PersonRef, bill: Bill, payload_hash: str) -> Settled:
        snap = (
            self.static.snapshot
        )  # this request settles with these versions, whatever is published meanwhile
        inst = self.ctx.institution(snap, env.institution_code)
        pid = await self.ctx.person_id(ref)
        partition = keys.partition_of(pid)
        async with self.ctx.person_lock(pid):
            for attempt in range(self.ctx.limits.commit_retries_max):
                now = self.ctx.now()
                person, care = await self.read_for(snap, pid, ref, bill, (inst.code, env.message_id))
                on = care.day
                earlier = person.earlier.earlier if person.earlier is not None else None
                seen = classify(earlier, "settle", payload_hash, pid)
                if seen == "resend":  # answer as the first time, whatever changed since
                    await self.ctx.store.confirm_replicated(pid, inst.code, env.message_id)
                    return resent(env, person.earlier_response)
                refuse_seen(seen, env)
                c = self.compute(snap, inst, person, bill, care)
                sid = f"S{partition:03d}-{now:%y%m%d}-{secrets.token_hex(8)}"
                admitted = admit(c.year, person.balance_fen, sid, c.split, bill.stay_id)
                if isinstance(admitted, EngineRejected):
                    raise Rejected(admitted.code, admitted.reason)
                response = pb.SettleResponse(
                    settlement_id=sid,
                    message_id=env.message_id,
                    settled_at=now.isoformat(timespec="seconds"),
                    split=self.encode(c, bill),
                    person_id=pid,
                ).SerializeToString()
                inputs = SettlementInputs(
                    bill, on, inst.code, c.split.policy_version, c.split.catalog_version,
                    snap.versions.get("institutions", ""), person.digest, person.balance_fen,
                )  # fmt: skip
                live = LiveSettlement(admitted.contribution, inputs, Money.of(c.split))
                route = route_of(inst, c.enrolment, c.split.scheme, bill, pid)
                message = MessageRecord(inst.code, env.message_id, "settle", payload_hash, pid, sid, "resp")
                commit = Commit(
                    pid,
                    person.version,
                    admitted.balance_fen,
                    [(c.year, admitted.year)],
                    [message],
                    new=[
                        NewSettlement(sid, pid, c.year.key, inst.code, env.message_id, response, live, route)
                    ],
                    events=[event("settle", sid, sid, env.message_id, now, route, live.money, c.split)],
                )
                outcome = await self.ctx.commit(commit)
                if outcome.status == "OK":
                    count_settlement(c.enrolment, bill, c.split)
                    count_audit_flags(c.enrolment.region, c.split.audit_flags, "flagged")
                    logs.note(settlement_id=sid)
                    audit("settle", env, sid, live.money, c.split.policy_version, c.split.catalog_version)
                    return Settled(response, False, sid, c.split)
                if outcome.status == "CLAIMED":
                    refuse_claimed(outcome.detail, pid, env)
                if outcome.status == "EXISTS":  # a resend that raced its original to the commit
                    continue  # the next read finds the record and answers as the first time
                await self.ctx.backoff(attempt)
        raise Rejected(Rejection.PERSON_BUSY, "the person's account is busy; retry with the same message id")

    # ---------------------------------------------------------------- eligibility

    async def eligibility(self, env: Envelope, ref: PersonRef) -> Any:
        snap = self.static.snapshot
        inst = self.ctx.institution(snap, env.institution_code)
        pid = await self.ctx.person_id(ref)
        on = self.ctx.now().date()
        person = await self.ctx.read_person(pid, ref, on.year)
        p = person.person
        response = pb.QueryEligibilityResponse(
            person_id=pid,
            masked_name=codec.mask_name(p.name),
            masked_id_number=privacy.mask_id_number(p.id_number),
            account_balance_fen=person.balance_fen,
        )
        for enrolment in p.enrolments:
            if not enrolment.in_force(on):
                continue
            policy = snap.policy(enrolment.region, on)
            tier = tier_in_force(enrolment, policy.tier_switch, on) if policy else None
            response.enrolments.add(
                region=enrolment.region,
                district=enrolment.district,
                scheme=codec.SCHEME_TO_PB[enrolment.scheme],
                tier=tier or 0,
                person_type=enrolment.person_type.value,
                valid_from=enrolment.valid_from.isoformat(),
                valid_to=enrolment.valid_to.isoformat() if enrolment.valid_to else "",
            )
            plan = policy.plans.get((enrolment.scheme, tier)) if policy and tier else None
            if plan is None:
                continue
            state = person.plan_year(plan_key(enrolment, on)).state(person.balance_fen)
            for visit, benefit in plan.benefits.items():
                basic = benefit.basic
                if basic is None or basic.annual_max_fen is None:
                    continue
                used_key = basic.fund_key if basic.annual_max_on is CapOn.FUND else basic.cost_key
                used = state.acc(used_key, on.year)
                response.limits.add(
                    layer=basic.name,
                    fund_code=basic.fund_code,
                    visit_type=visit.value,
                    annual_max_fen=basic.annual_max_fen,
                    remaining_fen=max(0, basic.annual_max_fen - used),
                )
            for layer in plan.layers:
                if layer.annual_max_fen is not None:
                    used = state.acc(layer.fund_key, on.year)
                    response.limits.add(
                        layer=layer.name,
                        fund_code=layer.fund_code,
                        visit_type=",".join(sorted(layer.visit_types)),
                        annual_max_fen=layer.annual_max_fen,
                        remaining_fen=max(0, layer.annual_max_fen - used),
                    )
        for reg in p.special_diseases:
            if reg.in_force(on):
                response.registrations.add(
                    kind="special_disease",
                    code=reg.code,
                    valid_from=reg.valid_from.isoformat(),
                    valid_to=reg.valid_to.isoformat() if reg.valid_to else "",
                )
        for approval in p.approvals:
            if approval.covers(on, approval.institution or inst.code):
                response.registrations.add(
                    kind=approval.kind.value,
                    code=approval.institution or "",
                    valid_from=approval.valid_from.isoformat(),
                    valid_to=approval.valid_to.isoformat() if approval.valid_to else "",
                )
        refusal = coverage_today(snap, inst, person, on)
        response.covered_here = refusal is None
        if refusal is not None:
            response.not_covered_reason = f"{refusal.code.name}: {refusal.reason}"
        return response


# ---------------------------------------------------------------- shared helpers


def coverage_today(
    snap: StaticSnapshot, inst: Institution, person: PersonSnapshot, on: date
) -> Rejected | None:
    """What a PreSettle here today would be refused for before looking at a bill, or None: the same
    checks, in the same order (gateway.engine.eligibility.covered), so QueryEligibility and PreSettle
    agree."""
    try:
        enrolment = home_enrolment(person, on)
        policy = policy_on(snap, enrolment.region, on)
    except Rejected as exc:
        return exc
    if inst.region not in snap.catalogs:
        return Rejected(Rejection.REGION_NOT_SERVED, f"no catalog of {inst.region} is loaded")
    found = covered(person.person, policy, inst, on, None)
    return Rejected(found.code, found.reason) if isinstance(found, EngineRejected) else None


def refuse_seen(seen: str, env: Envelope) -> None:
    if seen == "void":
        raise Rejected(
            Rejection.MESSAGE_ID_VOID,
            f"message {env.message_id} of {env.institution_code} was reversed before it settled: it is void;"
            " settle again under a new message id if the patient is still at the counter",
        )
    if seen == "reused":
        raise Rejected(Rejection.MESSAGE_ID_REUSED, reused(env))


def refuse_claimed(holder: str, person_id: str, env: Envelope) -> None:
    """The institution-wide claim of the message id is another request's."""
    held_by, kind, _ = ([*holder.split("|"), "", ""])[:3]
    if kind == "void" and held_by == person_id:
        refuse_seen("void", env)
    raise Rejected(Rejection.MESSAGE_ID_REUSED, reused(env))


def route_of(
    inst: Institution, enrolment: Enrolment, scheme: str, bill: Bill, person_id: str
) -> dict[str, Any]:
    """Who owes whom for a settlement: what every posting event of it carries. No names, no card or ID
    numbers."""
    return {
        "inst": inst.code, "inst_region": inst.region, "inst_district": inst.district,
        "city_managed": inst.city_managed, "insured_region": enrolment.region,
        "insured_district": enrolment.district, "scheme": scheme, "visit": bill.visit_type.value,
        "person": person_id,
    }  # fmt: skip


def event(
    kind: str,
    entry_id: str,
    settlement_id: str,
    message_id: str,
    at: datetime,
    route: dict[str, Any] | Any,
    money: Money,
    split: Split | None = None,
    cause: str = "",
) -> dict[str, Any]:
    """A posting event: the signed amounts of one ledger entry and everything needed to route them."""
    out = {
        **dict(route), "type": kind, "entry": entry_id, "sid": settlement_id, "msgid": message_id,
        "at": at.isoformat(timespec="seconds"), "total": money.total_fen, "funds": dict(money.funds),
        "account": money.account_fen, "cash": money.cash_fen,
    }  # fmt: skip
    if split is not None:
        out.update(policy=split.policy_version, catalog=split.catalog_version)
    if cause:
        out["cause"] = cause
    return out


def audit(
    kind: str, env: Envelope, settlement_id: str, money: Money, policy: str = "", catalog: str = ""
) -> None:
    """One audit line per committed settlement, reversal, refund or adjustment, and per resend answered
    from the store: who, what, how much, by which rules."""
    logs.AUDIT_LOG.info(
        kind,
        extra={
            "event": kind, "settlement_id": settlement_id, "institution": env.institution_code,
            "terminal": env.terminal_id, "operator": env.operator_id, "message_id": env.message_id,
            **logs.caller_identity(), "total_fen": money.total_fen, "fund_total_fen": money.fund_total_fen,
            "account_fen": money.account_fen, "cash_fen": money.cash_fen, "policy_version": policy,
            "catalog_version": catalog,
        },
    )  # fmt: skip


def count_settlement(enrolment: Enrolment, bill: Bill, result: Split) -> None:
    region = enrolment.region
    metrics.child(metrics.SETTLEMENTS, region, enrolment.district, result.scheme, bill.visit_type.value).inc()
    for fund in result.funds:
        if fund.amount_fen:
            metrics.child(metrics.FUND_FEN, region, fund.fund_code).inc(fund.amount_fen)
    if result.account_fen:
        metrics.child(metrics.ACCOUNT_FEN, region).inc(result.account_fen)
    if result.cash_fen:
        metrics.child(metrics.CASH_FEN, region).inc(result.cash_fen)


def count_audit_flags(region: str, flags: tuple[AuditFlag, ...], outcome: str) -> None:
    """medsettle_audit_flags_total per rule: committed settlements count their flags once; a blocked
    bill counts the flags that rejected it (a pre-settlement counts nothing: it commits nothing)."""
    for flag in flags:
        metrics.AUDIT_FLAGS.labels(region, flag.rule_id, flag.severity.value, outcome).inc()


def resent(env: Envelope, response: bytes) -> Settled:
    """The answer to a resend: the original response, byte for byte."""
    if not response:
        raise Unavailable("the stored answer of this message is missing; query the settlement")
    original = pb.SettleResponse.FromString(response)
    logs.note(settlement_id=original.settlement_id, duplicate=True)
    audit("resend", env, original.settlement_id, Money(original.split.total_fen))
    return Settled(response, True, original.settlement_id, None)


def reused(env: Envelope) -> str:
    return f"message id {env.message_id} of {env.institution_code} was used for a different request"
