"""The national front end's own rejection codes (430-439), beside the engine's (gateway/engine/codes.py):
what only the national protocol can get wrong. err_msg ends with the name and number."""

from __future__ import annotations

from enum import IntEnum


class NationalRejection(IntEnum):
    FIELD_INVALID = 430  # a field of the envelope or input is missing or malformed
    SIGNATURE_REJECTED = 431  # no or a wrong signature, an unknown key, a stale timestamp, a replay
    INSTITUTION_MISMATCH = 432  # fixmedins_code is not the institution proven by signature or certificate
    SIGN_NO_INVALID = 433  # sign_no is not a current 9001 sign-in of the institution
    VISIT_NOT_FOUND = 434  # mdtrt_id unknown, expired, another person's or another institution's
    VISIT_CLOSED = 435  # the visit is cancelled, or settled where that forbids the request
    FEE_DETAIL_REJECTED = 436  # a fee detail duplicated, unknown, settled, or beyond the visit's limit
    SETTLEMENT_IN_FLIGHT = 437  # another message id is settling this visit: resend it or reverse (2601)
    AMOUNT_MISMATCH = 438  # medfee_sumamt (or a line's det_item_fee_sumamt) disagrees with the details
    TRANSACTION_UNSUPPORTED = 439  # an infno, med_type or option MedSettle does not serve


def tagged(code: NationalRejection) -> str:
    return f"({code.name} {int(code)})"
