"""ClaimService (手工报销): agency staff submit a claim for care the patient paid in full (a
non-designated institution, an emergency, care outside the city) with its dates and receipts' totals.
It is split by the engine (gateway/engine/claims.py) under the insured region's `[claims]` rules, on
the person's plan-year, committed like a settlement (accumulators, idempotency record, posting event)
and booked as a payable to the person: the posting event names `person:<person id>` where a
settlement names the institution, so the ledger's payable account, statements and reconciliation
(by claim number) are the person's.

Idempotent by claim number: the same claim number with the same claim answers the first answer byte
for byte; with another claim it is refused (MESSAGE_ID_REUSED)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date
from typing import Any

from adapters import redis_keys as keys
from adapters.settlement_store import Commit, MessageRecord, NewSettlement
from gateway import codec, logs
from gateway.bill_dates import parse_day
from gateway.codec import Envelope, PersonRef
from gateway.engine import Rejected as EngineRejected
from gateway.engine import Rejection
from gateway.engine.claims import CATALOG_VERSION, claim_bill, claim_institution, split_claim
from gateway.engine.corrections import LiveSettlement, Money, SettlementInputs, admit, classify
from gateway.engine.model import Bill, VisitType
from gateway.engine.plan_year import BILL_TOTAL_MAX_FEN
from gateway.engine.policy import ClaimCase
from gateway.errors import InvalidInput, Rejected, Unavailable
from gateway.protos import claims_pb, pb
from gateway.service import Context, audit, event, home_enrolment, plan_key, policy_on
from telemetry import metrics

CLAIMS_INSTITUTION = "CLAIMS"  # the idempotency scope of claim numbers (an institution code of its own)
CASE_FROM_PB = {
    claims_pb.CLAIM_CASE_NON_DESIGNATED: ClaimCase.NON_DESIGNATED,
    claims_pb.CLAIM_CASE_EMERGENCY: ClaimCase.EMERGENCY,
    claims_pb.CLAIM_CASE_OUT_OF_CITY: ClaimCase.OUT_OF_CITY,
}


@dataclass(frozen=True, slots=True)
class Claim:
    claim_no: str
    person: PersonRef
    case: ClaimCase
    level: int
    on: date  # the date of care: the discharge date of a stay, else the visit date
    bill: Bill  # the receipts' totals as a bill (gateway.engine.claims.claim_bill)
    operator: str


class ClaimService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def submit(self, claim: Claim, payload_hash: str) -> bytes:
        ctx = self.ctx
        snap = ctx.static.snapshot
        pid = await ctx.person_id(claim.person)
        partition = keys.partition_of(pid)
        env = Envelope(CLAIMS_INSTITUTION, "", claim.operator, claim.claim_no)
        async with ctx.person_lock(pid):
            for attempt in range(ctx.limits.commit_retries_max):
                now = ctx.now()
                person = await ctx.read_person(pid, None, claim.on.year, (CLAIMS_INSTITUTION, claim.claim_no))
                earlier = person.earlier.earlier if person.earlier is not None else None
                seen = classify(earlier, "settle", payload_hash, pid)
                if seen == "resend":  # the first answer, byte for byte
                    if not person.earlier_response:
                        raise Unavailable("the stored answer of this claim is missing; retry")
                    return bytes(person.earlier_response)
                if seen in ("reused", "void"):
                    raise Rejected(
                        Rejection.MESSAGE_ID_REUSED,
                        f"claim number {claim.claim_no} was used for another claim",
                    )
                enrolment = home_enrolment(person, claim.on)
                policy = policy_on(snap, enrolment.region, claim.on)
                year = person.plan_year(plan_key(enrolment, claim.on))
                state = year.state(person.balance_fen)
                outcome = split_claim(
                    claim.bill, claim.case, claim.level, policy, person.person, state, claim.on
                )
                if isinstance(outcome, EngineRejected):
                    raise Rejected(outcome.code, outcome.reason, outcome.line_no)
                sid = f"S{partition:03d}-{now:%y%m%d}-{secrets.token_hex(8)}"  # a settlement id like any
                admitted = admit(year, person.balance_fen, sid, outcome, None)
                if isinstance(admitted, EngineRejected):
                    raise Rejected(admitted.code, admitted.reason)
                split_pb = codec.encode_split(
                    outcome, enrolment.region, enrolment.district, year.key.year, None, None, False
                )
                response: bytes = claims_pb.ClaimResponse(
                    claim_id=sid, claim_no=claim.claim_no, person_id=pid,
                    settled_at=now.isoformat(timespec="seconds"), split=split_pb,
                ).SerializeToString()  # fmt: skip
                institution = claim_institution(claim.case, claim.level)
                inputs = SettlementInputs(
                    claim.bill, claim.on, institution, outcome.policy_version, CATALOG_VERSION,
                    snap.versions.get("institutions", ""), person.digest, person.balance_fen,
                )  # fmt: skip
                live = LiveSettlement(admitted.contribution, inputs, Money.of(outcome))
                route = route_to_person(enrolment.region, enrolment.district, outcome.scheme, claim, pid)
                message = MessageRecord(
                    CLAIMS_INSTITUTION, claim.claim_no, "settle", payload_hash, pid, sid, "resp"
                )
                commit = Commit(
                    pid, person.version, admitted.balance_fen, [(year, admitted.year)], [message],
                    new=[NewSettlement(
                        sid, pid, year.key, CLAIMS_INSTITUTION, claim.claim_no, response, live, route
                    )],
                    events=[event("settle", sid, sid, claim.claim_no, now, route, live.money, outcome)],
                )  # fmt: skip
                result = await ctx.commit(commit)
                if result.status == "OK":
                    metrics.CLAIMS.labels(enrolment.region, claim.case.value).inc()
                    logs.note(settlement_id=sid)
                    audit("claim", env, sid, live.money, outcome.policy_version, CATALOG_VERSION)
                    return response
                if result.status in ("EXISTS", "CLAIMED"):
                    continue  # the next read finds the record: a resend, or another claim's number
                await ctx.backoff(attempt)
        raise Rejected(
            Rejection.PERSON_BUSY, "the person's account is busy; retry with the same claim number"
        )


def route_to_person(region: str, district: str, scheme: str, claim: Claim, person_id: str) -> dict[str, Any]:
    """The insured district's agency pays the person: the payable is `payable:<district>:person:<id>`."""
    return {
        "inst": f"person:{person_id}", "inst_region": region, "inst_district": district,
        "city_managed": False, "insured_region": region, "insured_district": district, "scheme": scheme,
        "visit": claim.bill.visit_type.value, "person": person_id,
    }  # fmt: skip


CLAIM_VISITS = {
    pb.VISIT_TYPE_OUTPATIENT: VisitType.OUTPATIENT,
    pb.VISIT_TYPE_INPATIENT: VisitType.INPATIENT,
    pb.VISIT_TYPE_SPECIAL: VisitType.SPECIAL,
    pb.VISIT_TYPE_PHARMACY: VisitType.PHARMACY,
}

LEVELS_MAX = 8
NAME_LEN_MAX = 100


def decode_claim(request: Any, today: date) -> tuple[Claim, str]:
    """A ClaimRequest, every field checked; and its payload hash (the claim without the clerk)."""
    out: list[tuple[str, str]] = codec.text_violation(request.claim_no, "claim_no", True, codec.CODE_LEN_MAX)
    out += codec.person_violations(request.person)
    out += codec.text_violation(request.institution_name, "institution_name", False, NAME_LEN_MAX)
    out += codec.text_violation(request.operator_id, "operator_id", False, codec.CODE_LEN_MAX)
    if request.claim_case not in CASE_FROM_PB:
        out.append(("claim_case", "required: non_designated, emergency or out_of_city"))
    visit = CLAIM_VISITS.get(request.visit_type)
    if visit is None:
        out.append(("visit_type", "required: outpatient, inpatient, special or pharmacy"))
    if not 0 <= request.institution_level <= LEVELS_MAX:
        out.append(("institution_level", f"between 0 and {LEVELS_MAX}"))
    stay = visit is VisitType.INPATIENT
    dates: dict[str, date | None] = {}
    for name in ("admission_date", "discharge_date", "visit_date"):
        text = getattr(request, name)
        wanted = (name != "visit_date") if stay else (name == "visit_date")
        if not text:
            if wanted and name != "admission_date":
                out.append((name, "required (YYYY-MM-DD)"))
            continue
        if not wanted:
            out.append((name, "only for " + ("an inpatient claim" if name != "visit_date" else "a visit")))
            continue
        day = parse_day(text)
        if day is None:
            out.append((name, f"expected YYYY-MM-DD, got {text[:20]!r}"))
        elif day > today:
            out.append((name, f"{day} is in the future"))
        dates[name] = day
    admitted, discharged = dates.get("admission_date"), dates.get("discharge_date")
    if admitted and discharged and admitted > discharged:
        out.append(("admission_date", "after the discharge date"))
    parts = (request.full_selfpay_fen, request.over_limit_fen, request.first_selfpay_fen)
    for name, value in zip(("full_selfpay_fen", "over_limit_fen", "first_selfpay_fen"), parts, strict=True):
        if value < 0:
            out.append((name, "must not be negative"))
    if not 1 <= request.total_fen <= BILL_TOTAL_MAX_FEN:
        out.append(("total_fen", f"between 1 and {BILL_TOTAL_MAX_FEN} fen"))
    elif sum(parts) > request.total_fen:
        out.append(("total_fen", "smaller than its self-pay, over-limit and first self-pay parts together"))
    if out:
        raise InvalidInput(out)
    assert visit is not None
    on = discharged if stay else dates["visit_date"]
    assert on is not None
    in_scope = request.total_fen - sum(parts)
    bill = claim_bill(
        visit, in_scope, *parts,
        admitted_on=admitted, discharged_on=discharged, visit_on=dates.get("visit_date"),
    )  # fmt: skip
    claim = Claim(
        request.claim_no, codec.decode_person(request.person), CASE_FROM_PB[request.claim_case],
        request.institution_level, on, bill, request.operator_id,
    )  # fmt: skip
    same = claims_pb.ClaimRequest()
    same.CopyFrom(request)
    same.operator_id = ""  # another clerk resending the same claim sends the same claim
    return claim, codec.payload_hash(same)


class ClaimServicer:
    """ClaimService: decode, validate, call the service. The edge has already checked the caller's role
    (bureau: agency staff)."""

    def __init__(self, service: ClaimService, corrections: Any) -> None:
        self.service = service
        self.corrections = corrections  # gateway.correction_service.CorrectionService

    async def ReverseClaim(self, request: Any, context: Any = None) -> bytes:
        """A reversal like a terminal's, under the claims' own institution (CLAIMS): the reversal number
        is its message id, the claim number the original one."""
        from gateway.correction_service import Target

        out = codec.text_violation(request.reversal_no, "reversal_no", True, codec.CODE_LEN_MAX)
        out += codec.text_violation(request.claim_no, "claim_no", True, codec.CODE_LEN_MAX)
        out += codec.person_violations(request.person)
        out += codec.text_violation(request.operator_id, "operator_id", False, codec.CODE_LEN_MAX)
        if out:
            raise InvalidInput(out)
        env = Envelope(CLAIMS_INSTITUTION, "", request.operator_id, request.reversal_no)
        target = Target("", request.claim_no, codec.decode_person(request.person))
        digest = codec.payload_hash(pb.ReverseRequest(original_message_id=request.claim_no))
        return bytes(await self.corrections.reverse(env, target, digest))

    async def SubmitClaim(self, request: Any, context: Any = None) -> bytes:
        ctx = self.service.ctx
        claim, digest = decode_claim(request, ctx.now().date())
        if not ctx.static.snapshot.ready:
            raise Unavailable("no policy, catalog or institution data is loaded")
        return await self.service.submit(claim, digest)  # stored bytes on a resend (see passthrough)
