"""What the engine returns: a Rejected value or a Split. Field names follow the national platform's
vocabulary where one exists. Per-line and per-fund records are NamedTuples: as immutable as a frozen
dataclass and several times cheaper to build, which matters on a 100-line bill."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from gateway.engine.audit_rules import AuditFlag
from gateway.engine.codes import Rejection
from gateway.engine.model import ItemClass, StayTotals


@dataclass(frozen=True, slots=True)
class Rejected:
    code: Rejection
    reason: str  # human readable, names the line or the rule
    line_no: int | None = None
    audit_flags: tuple[AuditFlag, ...] = ()  # AUDIT_BLOCKED: every flag the rules raised


class LineSplit(NamedTuple):
    line_no: int
    code: str
    item_class: ItemClass  # chrgitm_lv
    amount_fen: int  # det_item_fee_sumamt
    full_selfpay_fen: int  # fulamt_ownpay_amt
    over_limit_fen: int  # overlmt_amt
    first_selfpay_fen: int  # preselfpay_amt
    in_scope_fen: int  # inscp_scp_amt
    selfpay_bp: int  # selfpay_prop
    price_limit_fen: int | None  # pric_uplmt_amt
    flags: tuple[str, ...]  # why a part is not in scope, e.g. CLASS_C, MIN_LEVEL, OVER_QUANTITY


class FundPayment(NamedTuple):
    layer: str
    fund_code: str
    amount_fen: int
    remaining_max_fen: int | None  # what the layer may still pay this year after this bill


class TraceStep(NamedTuple):
    rule: str  # e.g. "deductible.stay_rule", "basic.band", "penalty.level3"
    detail: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Split:
    policy_version: str
    catalog_version: str
    scheme: str
    tier: int
    lines: tuple[LineSplit, ...]
    total_fen: int  # medfee_sumamt
    full_selfpay_fen: int
    over_limit_fen: int
    first_selfpay_fen: int
    in_scope_fen: int
    deductible_fen: int  # act_pay_dedc
    funds: tuple[FundPayment, ...]  # one per paying layer, in cascade order
    fund_total_fen: int  # fund_pay_sumamt
    person_share_fen: int  # psn_part_amt
    account_fen: int  # acct_pay
    cash_fen: int  # psn_cash_pay
    account_balance_after_fen: int  # balc
    deltas: Mapping[str, int]  # accumulator increments to commit atomically with the account debit
    trace: tuple[TraceStep, ...]
    flags: tuple[str, ...]  # bill-level: PENALTY_LEVEL3, PENALTY_OUT_OF_REGION, CROSS_REGION, ...
    stay: StayTotals | None = None  # inpatient and maternity: what this bill adds to its stay
    # When the basic fund's annual maximum cut its payment: what the ratio would have paid, and the
    # part above the maximum (both 0 when the maximum cut nothing)
    basic_uncapped_fen: int = 0
    basic_over_cap_fen: int = 0
    audit_flags: tuple[AuditFlag, ...] = ()  # the pre-settlement audit rules' flags (none blocking)
    # Per-disease payment: the rule's name, and what the institution bears (hosp_part_amt): the bill's
    # total minus the fund's fixed payment and the person's share; negative when it keeps a surplus.
    # Then fund + account + cash + institution = total.
    per_disease: str = ""
    institution_fen: int = 0


SplitOutcome = Split | Rejected
