"""The service layer: eligibility, pre-settle, settle, reverse and query. It loads static data from the
in-process snapshot, the person in one pipelined Redis read, runs the pure engine, and commits in one
Lua script. Outcomes a client can cause are raised as gateway.errors values; Redis trouble as
Unavailable. No gRPC here: the servicer maps these to status codes."""

from __future__ import annotations

import asyncio
import random
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from adapters import redis_keys as keys
from adapters.redis_store import PersonSnapshot, RedisStore, StoredSettlement
from gateway import codec, logs
from gateway.codec import Envelope, PersonRef
from gateway.engine import Rejected as EngineRejected
from gateway.engine import Rejection, Split, split
from gateway.engine.eligibility import enrolment_in_force, tier_in_force
from gateway.engine.model import Bill, Enrolment, Institution
from gateway.engine.policy import CapOn
from gateway.errors import Rejected
from gateway.protos import pb
from rules_cache.static_data import StaticCache, StaticSnapshot
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


class SettlementService:
    def __init__(
        self,
        store: RedisStore,
        static: StaticCache,
        now: Callable[[], datetime],
        limits: ServiceLimits = ServiceLimits(),
    ) -> None:
        self.store = store
        self.static = static
        self.now = now
        self.limits = limits
        # One commit at a time per person in this process, so concurrent bills for one person queue
        # instead of spinning on the compare-and-set; other processes are kept honest by the CAS.
        self._person_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # ---------------------------------------------------------------- lookups

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
        self, pid: str, ref: PersonRef, year: int, message: tuple[str, str] | None = None
    ) -> PersonSnapshot:
        snapshot = await self.store.read_person(pid, year, message)
        if snapshot is None:
            raise Rejected(Rejection.PERSON_NOT_FOUND, f"person {pid} has no record")
        if snapshot.earlier is None and ref.card_no and snapshot.card_status != "normal":
            raise Rejected(CARD_REJECTIONS[snapshot.card_status], f"card is {snapshot.card_status}")
        return snapshot

    @staticmethod
    def home_enrolment(snapshot: PersonSnapshot, on: date) -> Enrolment:
        for enrolment in snapshot.person.enrolments:
            if enrolment.in_force(on):
                return enrolment
        raise Rejected(Rejection.NOT_ENROLLED, f"no enrolment in force on {on}")

    # ---------------------------------------------------------------- split

    def compute(
        self, snap: StaticSnapshot, inst: Institution, person: PersonSnapshot, bill: Bill, on: date
    ) -> tuple[Split, Enrolment]:
        enrolment = self.home_enrolment(person, on)
        policy = snap.policies.get(enrolment.region)
        catalog = snap.catalogs.get(inst.region)
        if policy is None or catalog is None:
            missing = (
                "policy of region " + enrolment.region if policy is None else "catalog of " + inst.region
            )
            raise Rejected(Rejection.REGION_NOT_SERVED, f"no {missing} is loaded")
        outcome = split(bill, policy, catalog, inst, person.person, person.state, on)
        if isinstance(outcome, EngineRejected):
            raise Rejected(outcome.code, outcome.reason, outcome.line_no)
        return outcome, enrolment

    async def presettle(self, env: Envelope, ref: PersonRef, bill: Bill) -> Any:
        snap = self.static.snapshot
        inst = self.institution(snap, env.institution_code)
        pid = await self.person_id(ref)
        on = self.now().date()
        person = await self.read_person(pid, ref, on.year)
        result, enrolment = self.compute(snap, inst, person, bill, on)
        return pb.PreSettleResponse(split=codec.encode_split(result, enrolment.region, enrolment.district))

    async def settle(self, env: Envelope, ref: PersonRef, bill: Bill, payload_hash: str) -> Settled:
        snap = (
            self.static.snapshot
        )  # this request settles with these versions, whatever is published meanwhile
        inst = self.institution(snap, env.institution_code)
        pid = await self.person_id(ref)
        partition = keys.partition_of(pid)
        lock = self._person_locks.setdefault(pid, asyncio.Lock())
        async with lock:
            for attempt in range(self.limits.commit_retries_max):
                now = self.now()
                person = await self.read_person(pid, ref, now.year, (inst.code, env.message_id))
                if person.earlier is not None:  # a resend: answer as the first time, whatever changed since
                    earlier_hash, kind, earlier_response = person.earlier
                    if earlier_hash != payload_hash or kind != "settle":
                        raise Rejected(Rejection.MESSAGE_ID_REUSED, reused(env))
                    return resent(earlier_response)
                result, enrolment = self.compute(snap, inst, person, bill, now.date())
                sid = f"S{partition:03d}-{now:%y%m%d}-{secrets.token_hex(8)}"
                response = pb.SettleResponse(
                    settlement_id=sid,
                    message_id=env.message_id,
                    settled_at=now.isoformat(timespec="seconds"),
                    split=codec.encode_split(result, enrolment.region, enrolment.district),
                    person_id=pid,
                ).SerializeToString()
                outcome = await self.store.commit_settlement(
                    partition=partition,
                    institution=inst.code,
                    message_id=env.message_id,
                    payload_hash=payload_hash,
                    snapshot=person,
                    debit_fen=result.account_fen,
                    deltas=dict(result.deltas),
                    settlement_id=sid,
                    response=response,
                    event=posting_event(env.message_id, sid, inst, enrolment, bill, result, now, pid),
                )
                if outcome.status == "OK":
                    count_settlement(enrolment, bill, result)
                    logs.note(settlement_id=sid)
                    audit("settle", env, sid, result.total_fen, result.fund_total_fen, result.account_fen,
                          result.cash_fen, result.policy_version, result.catalog_version)  # fmt: skip
                    return Settled(response, False, sid, result)
                if outcome.status == "DUP":  # a resend that raced its original to the commit
                    return resent(outcome.response)
                if outcome.status == "MISMATCH":
                    raise Rejected(Rejection.MESSAGE_ID_REUSED, reused(env))
                # CONFLICT: another process committed for this person since our read. Back off a little
                # (jittered, so two gateways do not keep colliding), read again and recompute.
                metrics.COMMIT_CONFLICTS.inc()
                await asyncio.sleep(random.uniform(0, self.limits.conflict_backoff_ms / 1000 * (attempt + 1)))
        raise Rejected(Rejection.PERSON_BUSY, "the person's account is busy; retry with the same message id")

    # ---------------------------------------------------------------- reverse and query

    async def find(
        self, env: Envelope, settlement_id: str, original_message_id: str, ref: PersonRef | None
    ) -> StoredSettlement:
        if not settlement_id:
            if ref is None:
                raise ValueError("a message-id lookup needs the person")  # the codec guarantees it
            pid = await self.person_id(ref)
            found = await self.store.settlement_id_for_message(
                keys.partition_of(pid), env.institution_code, original_message_id
            )
            if found is None:
                raise Rejected(
                    Rejection.SETTLEMENT_NOT_FOUND,
                    f"no settlement for message {original_message_id} of {env.institution_code}",
                )
            settlement_id = found
        stored = await self.store.settlement(settlement_id)
        if stored is None or stored.institution != env.institution_code:
            # another institution's settlement is none of this terminal's business: same answer
            raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"no settlement {settlement_id} here")
        return stored

    async def reverse(
        self,
        env: Envelope,
        settlement_id: str,
        original_message_id: str,
        ref: PersonRef | None,
        payload_hash: str,
    ) -> bytes:
        stored = await self.find(env, settlement_id, original_message_id, ref)
        if stored.status == "reversed":
            return stored.reversal
        original = pb.SettleResponse.FromString(stored.response)
        now = self.now()
        debit = original.split.account_fen
        response: bytes = pb.ReverseResponse(
            settlement_id=stored.settlement_id,
            reversal_id="R" + stored.settlement_id[1:],
            reversed_at=now.isoformat(timespec="seconds"),
            split=codec.mirror(original.split, await self.store.balance(stored.person_id) + debit),
        ).SerializeToString()
        event = {
            "type": "reverse",
            "sid": stored.settlement_id,
            "msgid": env.message_id,
            "at": now.isoformat(timespec="seconds"),
            "inst": stored.institution,
        }
        outcome = await self.store.reverse_settlement(
            stored=stored,
            institution=env.institution_code,
            message_id=env.message_id,
            payload_hash=payload_hash,
            response=response,
            event=event,
        )
        if outcome.status == "OK":
            metrics.REVERSALS.labels(original.split.insured_region).inc()
            logs.note(settlement_id=stored.settlement_id)
            s = original.split
            audit("reverse", env, stored.settlement_id, -s.total_fen, -s.fund_total_fen, -s.account_fen,
                  -s.cash_fen, s.policy_version, s.catalog_version)  # fmt: skip
            return response
        if outcome.status == "DUP":
            return outcome.response
        if outcome.status == "MISMATCH":
            raise Rejected(Rejection.MESSAGE_ID_REUSED, reused(env))
        raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"no settlement {stored.settlement_id}")

    async def get(
        self, env: Envelope, settlement_id: str, original_message_id: str, ref: PersonRef | None
    ) -> Any:
        stored = await self.find(env, settlement_id, original_message_id, ref)
        reversed_ = stored.status == "reversed"
        return pb.GetSettlementResponse(
            status=pb.SETTLEMENT_STATUS_REVERSED if reversed_ else pb.SETTLEMENT_STATUS_SETTLED,
            settlement=pb.SettleResponse.FromString(stored.response),
            reversal=pb.ReverseResponse.FromString(stored.reversal) if reversed_ else None,
        )

    async def eligibility(self, env: Envelope, ref: PersonRef) -> Any:
        snap = self.static.snapshot
        inst = self.institution(snap, env.institution_code)
        pid = await self.person_id(ref)
        on = self.now().date()
        person = await self.read_person(pid, ref, on.year)
        p = person.person
        response = pb.QueryEligibilityResponse(
            person_id=pid,
            masked_name=codec.mask_name(p.name),
            masked_id_number=codec.mask_id_number(p.id_number),
            account_balance_fen=person.state.account_balance_fen,
        )
        for enrolment in p.enrolments:
            if not enrolment.in_force(on):
                continue
            policy = snap.policies.get(enrolment.region)
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
            for visit, benefit in plan.benefits.items():
                basic = benefit.basic
                if basic is None or basic.annual_max_fen is None:
                    continue
                used_key = basic.fund_key if basic.annual_max_on is CapOn.FUND else basic.cost_key
                used = person.state.acc(used_key, on.year)
                response.limits.add(
                    layer=basic.name,
                    fund_code=basic.fund_code,
                    visit_type=visit.value,
                    annual_max_fen=basic.annual_max_fen,
                    remaining_fen=max(0, basic.annual_max_fen - used),
                )
            for layer in plan.layers:
                if layer.annual_max_fen is not None:
                    used = person.state.acc(layer.fund_key, on.year)
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
        home = next((e for e in p.enrolments if e.in_force(on)), None)
        response.covered_here = bool(
            inst.designated
            and home is not None
            and inst.region in snap.catalogs
            and enrolment_in_force(p, home.region, on) is not None
        )
        return response


def audit(
    kind: str,
    env: Envelope,
    settlement_id: str,
    total_fen: int,
    fund_total_fen: int,
    account_fen: int,
    cash_fen: int,
    policy_version: str,
    catalog_version: str,
) -> None:
    """One audit line per committed settlement or reversal: who, what, how much, by which rules."""
    logs.AUDIT_LOG.info(
        kind,
        extra={
            "event": kind, "settlement_id": settlement_id, "institution": env.institution_code,
            "terminal": env.terminal_id, "operator": env.operator_id, "message_id": env.message_id,
            "total_fen": total_fen, "fund_total_fen": fund_total_fen, "account_fen": account_fen,
            "cash_fen": cash_fen, "policy_version": policy_version, "catalog_version": catalog_version,
        },
    )  # fmt: skip


def count_settlement(enrolment: Enrolment, bill: Bill, result: Split) -> None:
    region = enrolment.region
    metrics.SETTLEMENTS.labels(region, enrolment.district, result.scheme, bill.visit_type.value).inc()
    for fund in result.funds:
        if fund.amount_fen:
            metrics.FUND_FEN.labels(region, fund.fund_code).inc(fund.amount_fen)
    if result.account_fen:
        metrics.ACCOUNT_FEN.labels(region).inc(result.account_fen)
    if result.cash_fen:
        metrics.CASH_FEN.labels(region).inc(result.cash_fen)


def resent(response: bytes) -> Settled:
    """The answer to a resend: the original response, byte for byte."""
    original = pb.SettleResponse.FromString(response).settlement_id
    logs.note(settlement_id=original, duplicate=True)
    return Settled(response, True, original, None)


def reused(env: Envelope) -> str:
    return f"message id {env.message_id} of {env.institution_code} was used for a different request"


def posting_event(
    message_id: str,
    sid: str,
    inst: Institution,
    enrolment: Enrolment,
    bill: Bill,
    result: Split,
    now: datetime,
    person_id: str,
) -> dict[str, Any]:
    """What the posting worker books: who owes whom, by fund. No names, no card or ID numbers."""
    return {
        "type": "settle",
        "sid": sid,
        "msgid": message_id,
        "at": now.isoformat(timespec="seconds"),
        "inst": inst.code,
        "inst_region": inst.region,
        "inst_district": inst.district,
        "city_managed": inst.city_managed,
        "insured_region": enrolment.region,
        "insured_district": enrolment.district,
        "scheme": result.scheme,
        "visit": bill.visit_type.value,
        "person": person_id,
        "total": result.total_fen,
        "funds": {f.fund_code: f.amount_fen for f in result.funds if f.amount_fen},
        "account": result.account_fen,
        "cash": result.cash_fen,
        "policy": result.policy_version,
        "catalog": result.catalog_version,
    }
