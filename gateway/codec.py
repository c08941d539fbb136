"""Protocol <-> domain. Decoding validates every field and collects all violations at once (named by
their proto path) so a terminal sees everything wrong with a request in one answer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any

from gateway import logs
from gateway.bill_dates import Dates, with_dates
from gateway.engine import Split
from gateway.engine.corrections import RefundLine
from gateway.engine.model import Bill, BillLine, ItemClass, Scheme, StayTotals, VisitType
from gateway.engine.money import yuan
from gateway.engine.plan_year import BILL_TOTAL_MAX_FEN
from gateway.errors import InvalidInput
from gateway.protos import pb
from rules_cache.records import LINES_MAX, QUANTITY_MAX, UNIT_PRICE_MAX_FEN

MESSAGE_ID_LEN_MAX = 40
CODE_LEN_MAX = 40
DIAGNOSES_MAX = 20  # diagnosis codes on one bill

VISIT_FROM_PB = {
    pb.VISIT_TYPE_OUTPATIENT: VisitType.OUTPATIENT,
    pb.VISIT_TYPE_INPATIENT: VisitType.INPATIENT,
    pb.VISIT_TYPE_PHARMACY: VisitType.PHARMACY,
    pb.VISIT_TYPE_SPECIAL: VisitType.SPECIAL,
    pb.VISIT_TYPE_MATERNITY: VisitType.MATERNITY,
}
CLASS_TO_PB = {ItemClass.A: pb.ITEM_CLASS_A, ItemClass.B: pb.ITEM_CLASS_B, ItemClass.C: pb.ITEM_CLASS_C}
SCHEME_TO_PB = {Scheme.EMPLOYEE: pb.SCHEME_EMPLOYEE, Scheme.RESIDENT: pb.SCHEME_RESIDENT}


@dataclass(frozen=True, slots=True)
class Envelope:
    institution_code: str
    terminal_id: str
    operator_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class PersonRef:
    card_no: str | None
    id_number: str | None


def text_violation(value: str, field: str, required: bool, limit: int) -> list[tuple[str, str]]:
    if not value:
        return [(field, "required")] if required else []
    if len(value) > limit:
        return [(field, f"at most {limit} characters")]
    if not value.isprintable() or value != value.strip():
        return [(field, "printable characters without surrounding spaces")]
    return []


def envelope_violations(env: Any, path: str = "envelope") -> list[tuple[str, str]]:
    return (
        text_violation(env.institution_code, f"{path}.institution_code", True, CODE_LEN_MAX)
        + text_violation(env.terminal_id, f"{path}.terminal_id", False, CODE_LEN_MAX)
        + text_violation(env.operator_id, f"{path}.operator_id", False, CODE_LEN_MAX)
        + text_violation(env.message_id, f"{path}.message_id", True, MESSAGE_ID_LEN_MAX)
    )


def person_violations(ref: Any, path: str = "person", required: bool = True) -> list[tuple[str, str]]:
    which = ref.WhichOneof("ref")
    if which is None:
        return [(f"{path}.card_no", "a card_no or an id_number is required")] if required else []
    value = getattr(ref, which)
    return text_violation(value, f"{path}.{which}", True, CODE_LEN_MAX)


def decode_envelope(env: Any) -> Envelope:
    logs.note(institution=env.institution_code, terminal=env.terminal_id, message_id=env.message_id)
    return Envelope(env.institution_code, env.terminal_id, env.operator_id, env.message_id)


def decode_person(ref: Any) -> PersonRef:
    which = ref.WhichOneof("ref")
    return PersonRef(
        ref.card_no if which == "card_no" else None, ref.id_number if which == "id_number" else None
    )


def bill_violations(bill: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if bill.visit_type not in VISIT_FROM_PB:
        out.append(("bill.visit_type", "required: outpatient, inpatient, pharmacy, special or maternity"))
    if not bill.lines:
        out.append(("bill.lines", "at least one line"))
    if len(bill.lines) > LINES_MAX:
        out.append(("bill.lines", f"at most {LINES_MAX} lines"))
        return out
    for i, line in enumerate(bill.lines):
        out += text_violation(line.code, f"bill.lines[{i}].code", True, CODE_LEN_MAX)
        if not 0 <= line.unit_price_fen <= UNIT_PRICE_MAX_FEN:
            out.append((f"bill.lines[{i}].unit_price_fen", f"between 0 and {UNIT_PRICE_MAX_FEN} fen"))
        if not 1 <= line.quantity <= QUANTITY_MAX:
            out.append((f"bill.lines[{i}].quantity", f"between 1 and {QUANTITY_MAX}"))
        if line.line_no < 0:
            out.append((f"bill.lines[{i}].line_no", "0 (position) or a positive number"))
    total = sum(line.unit_price_fen * line.quantity for line in bill.lines)
    if total > BILL_TOTAL_MAX_FEN:
        out.append(("bill.lines", f"the bill's total {yuan(total)} exceeds {yuan(BILL_TOTAL_MAX_FEN)} yuan"))
    if bill.stay_id:
        out += text_violation(bill.stay_id, "bill.stay_id", True, CODE_LEN_MAX)
        if bill.visit_type not in (pb.VISIT_TYPE_INPATIENT, pb.VISIT_TYPE_MATERNITY):
            out.append(("bill.stay_id", "only an inpatient or maternity bill belongs to a stay"))
    if bill.interim and not bill.stay_id:
        out.append(("bill.interim", "an interim settlement needs the stay_id its later parts will name"))
    if len(bill.diagnosis_codes) > DIAGNOSES_MAX:
        out.append(("bill.diagnosis_codes", f"at most {DIAGNOSES_MAX} diagnosis codes"))
    for i, code in enumerate(bill.diagnosis_codes[:DIAGNOSES_MAX]):
        out += text_violation(code, f"bill.diagnosis_codes[{i}]", True, CODE_LEN_MAX)
    if bill.visit_type == pb.VISIT_TYPE_SPECIAL and not bill.disease_code:
        out.append(("bill.disease_code", "required for a special-disease visit"))
    if bill.visit_type == pb.VISIT_TYPE_MATERNITY and not bill.maternity_event:
        out.append(("bill.maternity_event", "required for a maternity visit"))
    return out


def decode_bill(bill: Any) -> Bill:
    return Bill(
        VISIT_FROM_PB[bill.visit_type],
        tuple(
            BillLine(line.code, line.unit_price_fen, line.quantity, line.line_no or i + 1)
            for i, line in enumerate(bill.lines)
        ),
        disease_code=bill.disease_code or None,
        maternity_event=bill.maternity_event or None,
        emergency=bill.emergency,
        use_account=not bill.decline_account,
        stay_id=bill.stay_id or None,
        interim=bill.interim,
        diagnoses=tuple(bill.diagnosis_codes),
    )


STAY_VISITS = (pb.VISIT_TYPE_INPATIENT, pb.VISIT_TYPE_MATERNITY)


def decode_settle(request: Any, today: date) -> tuple[Envelope, PersonRef, Bill]:
    """A PreSettle or Settle request, every field checked (dates against `today`, the gateway's date in
    Asia/Shanghai), every date of the bill filled in (gateway/bill_dates.py)."""
    violations = envelope_violations(request.envelope) + person_violations(request.person)
    violations += bill_violations(request.bill)
    stay = request.bill.visit_type in STAY_VISITS
    dates = Dates(today)
    checked = dates.check(request.bill, stay)
    violations += dates.violations
    if violations:
        raise InvalidInput(violations)
    bill = with_dates(decode_bill(request.bill), today, checked, stay)
    return decode_envelope(request.envelope), decode_person(request.person), bill


def payload_hash(*messages: Any) -> str:
    """What makes two requests 'the same payload' for idempotency: the person and the bill (or the
    reversal target), serialised deterministically. Envelope fields that may differ on a resend
    (sent_at, terminal, operator) are not part of it."""
    digest = hashlib.blake2b(digest_size=16)
    for message in messages:
        digest.update(message.SerializeToString(deterministic=True))
        digest.update(b"\x00")
    return digest.hexdigest()


def refund_lines(request: Any) -> tuple[RefundLine, ...]:
    violations: list[tuple[str, str]] = []
    if not request.lines:
        violations.append(("lines", "at least one refunded line"))
    if len(request.lines) > LINES_MAX:
        violations.append(("lines", f"at most {LINES_MAX} lines"))
    for i, line in enumerate(request.lines[:LINES_MAX]):
        if line.line_no < 1:
            violations.append((f"lines[{i}].line_no", "the settlement's line number, 1 or more"))
        if not 1 <= line.quantity <= QUANTITY_MAX:
            violations.append((f"lines[{i}].quantity", f"between 1 and {QUANTITY_MAX}"))
    if violations:
        raise InvalidInput(violations)
    return tuple(RefundLine(line.line_no, line.quantity) for line in request.lines)


def encode_split(
    s: Split,
    insured_region: str,
    insured_district: str,
    plan_year: int = 0,
    stay_id: str | None = None,
    stay_after: StayTotals | None = None,
    interim: bool = False,
) -> Any:
    out = encode_split_only(s, insured_region, insured_district)
    out.plan_year = plan_year
    if stay_id and stay_after is not None:
        out.stay.CopyFrom(
            pb.StaySummary(
                stay_id=stay_id,
                parts=stay_after.parts,
                interim=interim,
                in_scope_fen=stay_after.in_scope_fen,
                deductible_fen=stay_after.deductible_fen,
                stay_no=stay_after.stay_no,
            )
        )  # fmt: skip
    return out


def encode_split_only(s: Split, insured_region: str, insured_district: str) -> Any:
    return pb.Split(
        lines=[
            pb.LineResult(
                line_no=ln.line_no,
                code=ln.code,
                item_class=CLASS_TO_PB[ln.item_class],
                amount_fen=ln.amount_fen,
                full_selfpay_fen=ln.full_selfpay_fen,
                over_limit_fen=ln.over_limit_fen,
                first_selfpay_fen=ln.first_selfpay_fen,
                in_scope_fen=ln.in_scope_fen,
                selfpay_bp=ln.selfpay_bp,
                price_limit_fen=ln.price_limit_fen or 0,
                flags=ln.flags,
            )
            for ln in s.lines
        ],
        total_fen=s.total_fen,
        full_selfpay_fen=s.full_selfpay_fen,
        over_limit_fen=s.over_limit_fen,
        first_selfpay_fen=s.first_selfpay_fen,
        in_scope_fen=s.in_scope_fen,
        deductible_fen=s.deductible_fen,
        funds=[
            pb.FundPayment(
                layer=f.layer,
                fund_code=f.fund_code,
                amount_fen=f.amount_fen,
                remaining_max_fen=-1 if f.remaining_max_fen is None else f.remaining_max_fen,
            )
            for f in s.funds
        ],
        fund_total_fen=s.fund_total_fen,
        person_share_fen=s.person_share_fen,
        account_fen=s.account_fen,
        cash_fen=s.cash_fen,
        account_balance_after_fen=s.account_balance_after_fen,
        flags=s.flags,
        policy_version=s.policy_version,
        catalog_version=s.catalog_version,
        scheme=SCHEME_TO_PB[Scheme(s.scheme)],
        tier=s.tier,
        insured_region=insured_region,
        insured_district=insured_district,
        basic_uncapped_fen=s.basic_uncapped_fen,
        basic_over_cap_fen=s.basic_over_cap_fen,
        per_disease=s.per_disease,
        institution_fen=s.institution_fen,
        audit_flags=[
            pb.AuditFlag(
                rule_id=f.rule_id, severity=f.severity.value, line_no=f.line_no, amount_fen=f.amount_fen,
                kind=f.kind.value, detail=f.detail,
            )
            for f in s.audit_flags
        ],
    )  # fmt: skip


MONEY_FIELDS = (
    "total_fen",
    "institution_fen",
    "full_selfpay_fen",
    "over_limit_fen",
    "first_selfpay_fen",
    "in_scope_fen",
    "deductible_fen",
    "fund_total_fen",
    "person_share_fen",
    "account_fen",
    "cash_fen",
)
LINE_MONEY_FIELDS = ("amount_fen", "full_selfpay_fen", "over_limit_fen", "first_selfpay_fen", "in_scope_fen")


def mirror(split: Any, balance_after_fen: int) -> Any:
    """The negative mirror of a split, for a reversal: every amount negated, nothing else changed."""
    out = pb.Split()
    out.CopyFrom(split)
    for name in MONEY_FIELDS:
        setattr(out, name, -getattr(out, name))
    for line in out.lines:
        for name in LINE_MONEY_FIELDS:
            setattr(line, name, -getattr(line, name))
    for fund in out.funds:
        fund.amount_fen = -fund.amount_fen
        fund.remaining_max_fen = -1
    out.account_balance_after_fen = balance_after_fen
    return out


def difference(after: Any, before: Any) -> Any:
    """after - before, field by field: the signed change a correction makes (lines by line number,
    funds by layer and fund code). Versions and flags are the new split's."""
    out = pb.Split()
    out.CopyFrom(after)
    for name in MONEY_FIELDS:
        setattr(out, name, getattr(after, name) - getattr(before, name))
    out.account_balance_after_fen = after.account_balance_after_fen
    old_lines = {line.line_no: line for line in before.lines}
    del out.lines[:]
    for line in after.lines:
        new = out.lines.add()
        new.CopyFrom(line)
        old = old_lines.pop(line.line_no, None)
        for name in LINE_MONEY_FIELDS:
            setattr(new, name, getattr(line, name) - (getattr(old, name) if old is not None else 0))
    for old in old_lines.values():  # a line refunded in full
        gone = out.lines.add()
        gone.CopyFrom(old)
        for name in LINE_MONEY_FIELDS:
            setattr(gone, name, -getattr(old, name))
    old_funds = {(f.layer, f.fund_code): f.amount_fen for f in before.funds}
    del out.funds[:]
    for f in after.funds:
        out.funds.add(
            layer=f.layer, fund_code=f.fund_code, remaining_max_fen=f.remaining_max_fen,
            amount_fen=f.amount_fen - old_funds.pop((f.layer, f.fund_code), 0),
        )  # fmt: skip
    for (layer, code), amount in old_funds.items():
        out.funds.add(layer=layer, fund_code=code, amount_fen=-amount, remaining_max_fen=-1)
    return out


def mask_name(name: str) -> str:
    return name[:1] + "*" * (len(name) - 1)
