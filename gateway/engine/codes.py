"""Every expected outcome that is not a split, in one ordered, numbered enum. Codes are stable: never
renumber or reuse one; add new codes at the end of their hundred. The gateway sends the name as the
`google.rpc.ErrorInfo.reason` and the number in its metadata; docs/REJECTION_CODES.md lists them all."""

from __future__ import annotations

from enum import IntEnum


class Rejection(IntEnum):
    # 1xx: the person, the card, the enrolment
    PERSON_NOT_FOUND = 101
    CARD_LOST = 102
    CARD_FROZEN = 103
    CARD_CANCELLED = 104
    NOT_ENROLLED = 110  # no enrolment of this region in force on the date of care
    ENROLMENT_SUSPENDED = 111  # contributions in arrears (欠费暂停)
    NO_PLAN = 112  # the policy has no plan for the person's scheme and tier

    # 2xx: the institution and what it may settle
    INSTITUTION_UNKNOWN = 201
    INSTITUTION_NOT_DESIGNATED = 202  # pay in full at the counter, claim later (先自付后报销)
    VISIT_TYPE_NOT_AGREED = 203  # the service agreement does not cover this visit type
    OUT_OF_REGION_NOT_FILED = 204  # the insured region's policy rejects unfiled out-of-region care
    VISIT_TYPE_NOT_COVERED = 205  # the person's plan has no benefit for this visit type
    POLICY_NOT_IN_FORCE = 206  # no policy version of the insured region covers the date of care

    # 3xx: the bill
    UNKNOWN_ITEM = 301  # a line's code is not in the catalog of the place of treatment
    SPECIAL_DISEASE_NOT_REGISTERED = 302
    MATERNITY_EVENT_UNKNOWN = 303
    DISEASE_CODE_MISSING = 304
    MATERNITY_LUMP_SUM_USED = (
        305  # the lump sum for this event was already paid as often as the policy allows
    )
    STAY_CLOSED = 306  # the stay's final settlement is live: reverse it before settling another part

    # 4xx: outcomes of the gateway around the engine (not returned by split())
    REGION_NOT_SERVED = 401  # no catalog of the place of treatment or policy of the insured region loaded
    SETTLEMENT_NOT_FOUND = 402
    MESSAGE_ID_REUSED = 403  # same (institution, message id), different payload
    PERSON_BUSY = 404  # concurrent commits for one person outlasted the retries; safe to retry
    LATER_SETTLEMENTS_EXIST = 405  # a correction of a settlement that later ones were computed on
    MESSAGE_ID_VOID = 406  # a reversal by this message id came first: it will never settle
    PLAN_YEAR_FULL = 407  # the plan-year holds the maximum number of live settlements
    REFUND_INVALID = 408  # a refunded line or quantity the settlement does not have
    SETTLEMENT_REVERSED = 409  # a refund of a settlement that is reversed
    READJUDICATION_REJECTED = 410  # a later settlement would be rejected on re-adjudication
    REFUND_WHOLE_BILL = 411  # every line refunded: reverse the settlement instead
    SETTLEMENT_ARCHIVED = 412  # its plan-year has left the correction window: the agency corrects it
    PLAN_YEAR_CLOSED = 413  # the date of care is in a plan-year the gateway no longer settles

    # 42x: the policy's rules beyond the split (returned by split())
    AUDIT_BLOCKED = 420  # a pre-settlement audit rule of a blocking severity hit the bill (3101/3102)
    CLAIM_CASE_NOT_COVERED = 421  # the policy pays no claims after the fact of this case

    @property
    def reason(self) -> str:
        return self.name
