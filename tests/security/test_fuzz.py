"""A bounded fuzz of the decoders: whatever bytes arrive, the edge's decoder returns a message or says
the body is undecodable, and the validation behind it answers with named fields or lets it through;
nothing raises anything else (which grpcio would turn into UNKNOWN)."""

from __future__ import annotations

from datetime import date
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import codec
from gateway.errors import InvalidInput
from gateway.ledger_service import decode_token, period
from gateway.protos import pb
from gateway.servicer import BadBody, decode_lookup, safe_decoder, target_violations

VALID = pb.SettleRequest(
    envelope=pb.Envelope(institution_code="H50010300001", terminal_id="T1", message_id="M1"),
    person=pb.PersonRef(card_no="Y53736293"),
    bill=pb.Bill(
        visit_type=pb.VISIT_TYPE_OUTPATIENT,
        lines=[pb.BillLine(code="T000005", unit_price_fen=1500, quantity=2)],
    ),
).SerializeToString()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validate(kind: Any, message: Any) -> None:
    """The validation each servicer method runs on a decoded request before any business code."""
    name = kind.DESCRIPTOR.name
    if name == "SettleRequest":
        codec.decode_settle(message, date(2026, 6, 15))
    elif name == "QueryEligibilityRequest":
        violations = codec.envelope_violations(message.envelope) + codec.person_violations(message.person)
        if violations:
            raise InvalidInput(violations)
    elif name in ("ReverseRequest", "GetSettlementRequest", "RefundRequest"):
        target_violations(message)
        decode_lookup(message)
        if name == "RefundRequest":
            codec.refund_lines(message)
    elif name == "ReconcileRequest":
        codec.envelope_violations(message.envelope)
        start, end = period(message.date_from, message.date_to)
        decode_token(message.page_token, start, end)
    elif name == "StatementRequest":
        codec.envelope_violations(message.envelope)


KINDS = [
    pb.SettleRequest, pb.QueryEligibilityRequest, pb.ReverseRequest, pb.RefundRequest,
    pb.GetSettlementRequest, pb.ReconcileRequest, pb.StatementRequest, pb.PingRequest,
]  # fmt: skip


def answered(data: bytes) -> None:
    for kind in KINDS:
        message = safe_decoder(kind)(data)
        if isinstance(message, BadBody):
            continue
        assert isinstance(message, kind)
        try:
            validate(kind, message)
        except InvalidInput as exc:
            assert exc.violations and all(field and why for field, why in exc.violations)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_decoded_or_named_undecodable(data: bytes) -> None:
    answered(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_messages_are_decoded_or_named_undecodable(changes: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for position, value in changes:
        data[position] = value
    answered(bytes(data))


@FUZZ
@given(st.text(max_size=80))
def test_page_tokens_are_refused_with_a_named_field(token: str) -> None:
    try:
        decode_token(token, "2026-06-01", "2026-06-30")
    except InvalidInput as exc:
        assert exc.violations[0][0] == "page_token"
