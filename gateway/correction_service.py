"""Corrections of committed settlements: reversal (whole), partial refund (退费), and the lookups a
terminal makes to learn an outcome (GetSettlement, 5203). The decisions are the pure core's
(gateway.engine.corrections); this module loads what they need, builds the answers and commits.

A reversal by original message id (2601) that finds nothing settled leaves a void record under that
message id, so a Settle still in flight is refused when it arrives: what the terminal learns from the
reversal is final."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from adapters import redis_keys as keys
from adapters.settlement_store import Commit, MessageRecord, SettlementChange, StoredSettlement
from gateway import codec, logs
from gateway.codec import Envelope, PersonRef
from gateway.engine import Rejected as EngineRejected
from gateway.engine import Rejection
from gateway.engine.corrections import (
    Change,
    Corrected,
    LiveSettlement,
    Money,
    Refund,
    RefundLine,
    Reverse,
    classify,
    correct,
)
from gateway.engine.plan_year import PlanYear
from gateway.errors import Rejected
from gateway.protos import pb
from gateway.resplit import load_rules
from gateway.service import Context, audit, event, refuse_claimed, refuse_seen
from telemetry import metrics


@dataclass(frozen=True, slots=True)
class Target:
    settlement_id: str
    original_message_id: str
    person: PersonRef | None


def current_split(s: StoredSettlement) -> Any:
    """What the settlement pays now: its latest correction's split, else the original's."""
    if s.corrections:
        return pb.Correction.FromString(s.corrections[-1]).split
    return pb.SettleResponse.FromString(s.response).split


class CorrectionService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ---------------------------------------------------------------- finding the settlement

    async def person_of(self, env: Envelope, target: Target) -> str:
        if target.settlement_id:
            stored = await self.ctx.settlement(target.settlement_id)
            if stored is None or stored.institution != env.institution_code:
                # another institution's settlement is none of this terminal's business: same answer
                raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"no settlement {target.settlement_id} here")
            return stored.person_id
        if target.person is None:
            raise ValueError("a message-id lookup needs the person")  # the codec guarantees it
        return await self.ctx.person_id(target.person)

    async def find(self, env: Envelope, target: Target, pid: str) -> StoredSettlement | None:
        """The settlement the target names; None when a message id names nothing (yet)."""
        sid = target.settlement_id
        if not sid:
            record = await self.ctx.store.message(pid, env.institution_code, target.original_message_id)
            if record is not None and record.kind == "void":
                return None
            if record is not None and record.kind != "settle":
                raise Rejected(
                    Rejection.SETTLEMENT_NOT_FOUND,
                    f"message {target.original_message_id} was a {record.kind}, not a settlement",
                )
            if record is not None:
                sid = record.settlement_id
            else:  # its record may have expired: the ledger knows what it settled, if anything
                found = await self.ctx.settled_by(env.institution_code, target.original_message_id)
                if found is None:
                    return None
                sid = found
        stored = await self.ctx.settlement(sid)
        if stored is None or stored.institution != env.institution_code or stored.person_id != pid:
            raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"no settlement {sid} here")
        return stored

    async def get(self, env: Envelope, target: Target) -> Any:
        pid = await self.person_of(env, target)
        stored = await self.find(env, target, pid)
        if stored is None:
            what = f"message {target.original_message_id} of {env.institution_code}"
            raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"no settlement for {what}")
        reversed_ = stored.status == "reversed"
        return pb.GetSettlementResponse(
            status=pb.SETTLEMENT_STATUS_REVERSED if reversed_ else pb.SETTLEMENT_STATUS_SETTLED,
            settlement=pb.SettleResponse.FromString(stored.response),
            reversal=pb.ReverseResponse.FromString(stored.reversal) if reversed_ else None,
            corrections=[pb.Correction.FromString(c) for c in stored.corrections],
            current=current_split(stored),
        )

    # ---------------------------------------------------------------- reverse and refund

    async def reverse(self, env: Envelope, target: Target, payload_hash: str) -> bytes:
        return await self.correct(env, target, Reverse(), payload_hash)

    async def refund(
        self, env: Envelope, target: Target, lines: tuple[RefundLine, ...], payload_hash: str
    ) -> bytes:
        return await self.correct(env, target, Refund(lines), payload_hash)

    async def correct(
        self, env: Envelope, target: Target, action: Reverse | Refund, payload_hash: str
    ) -> bytes:
        kind = "reverse" if isinstance(action, Reverse) else "refund"
        pid = await self.person_of(env, target)
        async with self.ctx.person_lock(pid):
            for attempt in range(self.ctx.limits.commit_retries_max):
                stored = await self.find(env, target, pid)
                if stored is not None and stored.archived:
                    return self.archived(stored, action)
                year_of_care = stored.plan.year if stored is not None else self.ctx.now().year
                person = await self.ctx.read_person(
                    pid, None, year_of_care, (env.institution_code, env.message_id)
                )
                earlier = person.earlier.earlier if person.earlier is not None else None
                seen = classify(earlier, kind, payload_hash, pid)
                if seen == "resend":
                    logs.note(duplicate=True)
                    await self.ctx.store.confirm_replicated(pid, env.institution_code, env.message_id)
                    return person.earlier_response
                refuse_seen("reused" if seen == "void" else seen, env)
                decided: Corrected | None = None
                if stored is None:
                    if isinstance(action, Refund):
                        raise Rejected(
                            Rejection.SETTLEMENT_NOT_FOUND,
                            f"no settlement for message {target.original_message_id}",
                        )
                    commit, answer = self.void(
                        env, target, pid, person.version, person.balance_fen, payload_hash
                    )
                elif stored.status == "reversed":
                    if isinstance(action, Refund):
                        raise Rejected(Rejection.SETTLEMENT_REVERSED, f"{stored.settlement_id} is reversed")
                    # reversed before, maybe under another message id: the same answer; nothing changes
                    message = MessageRecord(
                        env.institution_code,
                        env.message_id,
                        kind,
                        payload_hash,
                        pid,
                        stored.settlement_id,
                        "rev",
                    )
                    commit = Commit(pid, person.version, person.balance_fen, [], [message])
                    answer = stored.reversal
                else:
                    year = person.plan_year(stored.plan)
                    decided, tail = await self.decide(year, person.balance_fen, stored, action)
                    commit, answer = self.build(
                        env, kind, payload_hash, pid, person.version, year, stored, decided, tail
                    )
                outcome = await self.ctx.commit(commit)
                if outcome.status == "OK":
                    self.committed(env, target, stored, decided)
                    return answer
                if outcome.status == "CLAIMED":
                    refuse_claimed(outcome.detail, pid, env)
                if outcome.status == "EXISTS":
                    continue  # a resend raced us, or the Settle we would void got in first: look again
                await self.ctx.backoff(attempt)
        raise Rejected(Rejection.PERSON_BUSY, "the person's account is busy; retry with the same message id")

    @staticmethod
    def archived(stored: StoredSettlement, action: Reverse | Refund) -> bytes:
        """A settlement that has left Redis (its plan-year did, or retention by days took it): its
        reversal, if it has one, is answered as before (nothing changes); anything else would need the
        settlement's place in its plan-year, which only the agency's books have now."""
        if stored.status == "reversed" and isinstance(action, Reverse):
            logs.note(duplicate=True, archived=True)
            return stored.reversal
        raise Rejected(
            Rejection.SETTLEMENT_ARCHIVED,
            f"{stored.settlement_id} (plan-year {stored.plan.year}) has left the gateway's correction"
            " window: the agency corrects it by hand",
        )

    @staticmethod
    def committed(
        env: Envelope, target: Target, stored: StoredSettlement | None, decided: Corrected | None
    ) -> None:
        """After the commit, never before: audit lines and counts of what it did."""
        if stored is None:
            logs.note(voided=target.original_message_id)
            audit("void", env, "", Money())
            return
        logs.note(settlement_id=stored.settlement_id)
        for change in decided.changes if decided is not None else ():
            metrics.CORRECTIONS.labels(change.kind).inc()
            if change.kind == "reverse":
                metrics.REVERSALS.labels(str(stored.route.get("inst_region", ""))).inc()
            audit(change.kind, env, change.settlement_id, change.difference)
        if decided is not None:
            logs.note(adjusted=len(decided.changes) - 1)

    async def decide(
        self, year: PlanYear, balance: int, stored: StoredSettlement, action: Reverse | Refund
    ) -> tuple[Corrected, dict[str, StoredSettlement]]:
        """The core's decision, with the target and its later settlements as loaded."""
        if stored.settlement_id not in year.live:
            raise Rejected(
                Rejection.SETTLEMENT_NOT_FOUND, f"{stored.settlement_id} is not live in {year.key}"
            )
        tail_ids = list(year.live[year.live.index(stored.settlement_id) :])
        loaded = [stored, *(await self.ctx.store.settlements(tail_ids[1:]))]
        if any(s is None for s in loaded):
            raise Rejected(Rejection.SETTLEMENT_NOT_FOUND, f"a later settlement of {year.key} is missing")
        tail: list[LiveSettlement] = [s.live for s in loaded if s is not None]
        policy = await self.ctx.static.load("policy", stored.plan.region, stored.live.inputs.policy_version)
        _, resplit = await load_rules(
            self.ctx.static, self.ctx.store, stored.person_id, stored.plan.region, [s.inputs for s in tail]
        )
        decision = correct(year, balance, tail, action, policy.corrections, resplit)
        if isinstance(decision, EngineRejected):
            raise Rejected(decision.code, decision.reason, decision.line_no)
        return decision, {s.settlement_id: s for s in loaded if s is not None}

    def void(
        self, env: Envelope, target: Target, pid: str, version: int, balance: int, payload_hash: str
    ) -> tuple[Commit, bytes]:
        """Nothing settled under the original message id: void it, so it never settles."""
        now = self.ctx.now()
        answer = pb.ReverseResponse(
            reversal_id=f"V{keys.partition_of(pid):03d}-{now:%y%m%d}-{secrets.token_hex(8)}",
            reversed_at=now.isoformat(timespec="seconds"),
            nothing_settled=True,
        ).SerializeToString()
        own = MessageRecord(
            env.institution_code, env.message_id, "reverse", payload_hash, pid, response=answer
        )
        void = MessageRecord(env.institution_code, target.original_message_id, "void", "", pid)
        return Commit(pid, version, balance, [], [own, void]), answer

    def build(
        self,
        env: Envelope,
        kind: str,
        payload_hash: str,
        pid: str,
        version: int,
        year: PlanYear,
        stored: StoredSettlement,
        decision: Corrected,
        tail: dict[str, StoredSettlement],
    ) -> tuple[Commit, bytes]:
        now = self.ctx.now()
        at = now.isoformat(timespec="seconds")
        sid = stored.settlement_id
        target, *later = decision.changes
        changes: list[SettlementChange] = []
        events: list[dict[str, Any]] = []
        adjustments: list[Any] = []
        cause = f"R{sid[1:]}" if kind == "reverse" else f"F{sid[1:]}-{len(stored.corrections) + 1}"
        for change in later:
            s = tail[change.settlement_id]
            no = len(s.corrections) + 1
            adjustment_id = f"A{s.settlement_id[1:]}-{no}"
            before_split = current_split(s)
            after_split = self.encode_change(s, change, decision.balance_fen)
            record = pb.Correction(
                correction_id=adjustment_id,
                kind="adjustment",
                at=at,
                split=after_split,
                difference=codec.difference(after_split, before_split),
                cause=cause,
            )
            adjustments.append(
                pb.Adjustment(
                    adjustment_id=adjustment_id,
                    settlement_id=s.settlement_id,
                    institution_code=s.institution,
                    date_of_care=s.live.inputs.on.isoformat(),
                    difference=record.difference,
                    split=after_split,
                    cause=cause,
                )
            )
            changes.append(
                SettlementChange(
                    s.settlement_id,
                    live=self.live_after(change),
                    correction=record.SerializeToString(),
                    correction_no=no,
                )
            )
            if not change.difference.is_zero:
                events.append(
                    event(
                        "adjust",
                        adjustment_id,
                        s.settlement_id,
                        "",
                        now,
                        s.route,
                        change.difference,
                        cause=cause,
                    )
                )
        current = current_split(stored)
        if kind == "reverse":
            answer_pb: Any = pb.ReverseResponse(
                settlement_id=sid,
                reversal_id=cause,
                reversed_at=at,
                split=codec.mirror(current, decision.balance_fen),
                adjustments=adjustments,
            )
            answer = answer_pb.SerializeToString()
            changes.insert(0, SettlementChange(sid, reversal=answer))
            events.insert(
                0, event("reverse", cause, sid, env.message_id, now, stored.route, target.difference)
            )
            field = "rev"
        else:
            no = len(stored.corrections) + 1
            after_split = self.encode_change(stored, target, decision.balance_fen)
            difference = codec.difference(after_split, current)
            answer_pb = pb.RefundResponse(
                refund_id=cause,
                settlement_id=sid,
                refunded_at=at,
                split=after_split,
                difference=difference,
                adjustments=adjustments,
            )
            record = pb.Correction(
                correction_id=cause,
                kind="refund",
                at=at,
                message_id=env.message_id,
                split=after_split,
                difference=difference,
            )
            answer = answer_pb.SerializeToString()
            changes.insert(
                0,
                SettlementChange(
                    sid,
                    live=self.live_after(target),
                    correction=record.SerializeToString(),
                    correction_no=no,
                    answer=answer,
                ),
            )
            events.insert(
                0, event("refund", cause, sid, env.message_id, now, stored.route, target.difference)
            )
            field = f"f:{no}"
        message = MessageRecord(env.institution_code, env.message_id, kind, payload_hash, pid, sid, field)
        commit = Commit(
            pid,
            version,
            decision.balance_fen,
            [(year, decision.year)],
            [message],
            changes=changes,
            events=events,
        )
        return commit, answer

    @staticmethod
    def live_after(change: Change) -> LiveSettlement:
        if change.contribution is None or change.inputs is None:
            raise ValueError("a re-split change carries its contribution and inputs")
        return LiveSettlement(change.contribution, change.inputs, change.after)

    def encode_change(self, s: StoredSettlement, change: Change, balance_after: int) -> Any:
        if change.split is None:
            raise ValueError("a re-split change carries its split")
        original = pb.SettleResponse.FromString(s.response).split
        out = codec.encode_split_only(change.split, original.insured_region, original.insured_district)
        out.plan_year = original.plan_year
        out.account_balance_after_fen = balance_after
        if original.HasField("stay"):
            out.stay.CopyFrom(original.stay)
        return out
