"""Pre-settlement audit rules (the national platform's 3101/3102 事前事中审核), as data of the insured
region's policy: each rule looks at the bill's lines and the person and may raise a flag (rule id,
severity, line, amount). The policy says which severities block the bill; the rest only flag, and the
flags travel with the split, are stored with the settlement and counted per rule. Pure: no I/O.

Kinds (docs/POLICY_LANGUAGE.md section 21):
- sex, age: an item restricted to a sex or an age range, billed for someone else;
- duplicate: one item charged twice in a visit (same code, price and day on two lines);
- daily_quantity: the units of an item given on one day above a per-day maximum;
- diagnosis: a drug whose payment is limited to listed diagnoses (限定支付范围), on a bill whose
  diagnosis codes match none of them;
- visit_type: an item not allowed for the bill's visit type;
- days_supply: a pharmacy purchase lasting more days than allowed (quantity / units per day).

Cost: rules are indexed by catalog code, so a line costs one dict look-up when no rule names it; only
duplicate and daily-quantity rules group lines, and only for the codes they name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import NamedTuple

from gateway.engine.model import Bill, Sex, VisitType


class AuditKind(StrEnum):
    SEX = "sex"
    AGE = "age"
    DUPLICATE = "duplicate"
    DAILY_QUANTITY = "daily_quantity"
    DIAGNOSIS = "diagnosis"
    VISIT_TYPE = "visit_type"
    DAYS_SUPPLY = "days_supply"


class Severity(StrEnum):
    INFO = "info"  # 提示
    WARNING = "warning"  # 警示
    ERROR = "error"  # 违规


@dataclass(frozen=True, slots=True)
class AuditRule:
    rule_id: str
    kind: AuditKind
    severity: Severity
    codes: frozenset[str]  # the items it looks at; empty (duplicate only): every item
    visit_types: frozenset[VisitType] = frozenset()  # where it applies; empty: every visit type
    sex: Sex | None = None  # SEX: the sex the item is for
    min_age: int | None = None  # AGE
    max_age: int | None = None
    per_day_max: int = 0  # DAILY_QUANTITY: units of the codes a day
    diagnoses: tuple[str, ...] = ()  # DIAGNOSIS: code prefixes (ICD-10), any one matches
    allowed_visit_types: frozenset[VisitType] = frozenset()  # VISIT_TYPE
    units_per_day: int = 1  # DAYS_SUPPLY: the daily dose in dispensing units
    days_max: int = 0  # DAYS_SUPPLY
    description: str = ""


class AuditFlag(NamedTuple):
    rule_id: str
    severity: Severity
    line_no: int
    amount_fen: int  # what the hit concerns: the line, or the units beyond a maximum
    kind: AuditKind
    detail: str


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    rules: tuple[AuditRule, ...]
    blocking: frozenset[Severity] = frozenset()
    by_code: Mapping[str, tuple[AuditRule, ...]] = field(default_factory=dict)
    every_code: tuple[AuditRule, ...] = ()  # rules without codes (duplicate charges of any item)

    @staticmethod
    def of(rules: tuple[AuditRule, ...], blocking: frozenset[Severity]) -> AuditPolicy:
        index: dict[str, list[AuditRule]] = {}
        for rule in rules:
            for code in rule.codes:
                index.setdefault(code, []).append(rule)
        every = tuple(r for r in rules if not r.codes)
        return AuditPolicy(rules, blocking, {c: tuple(found) for c, found in index.items()}, every)


def audit_bill(audit: AuditPolicy, bill: Bill, on: date, sex: Sex, age: int) -> tuple[AuditFlag, ...]:
    """Every flag the rules raise on this bill, in line order, then rule order. Written for speed (it
    runs on every line of every bill of a region with rules): kinds compared as module constants, the
    diagnosis match computed once per rule, messages built only for hits."""
    flags: list[AuditFlag] = []
    per_day: dict[tuple[str, str, date], int] = {}  # (rule, code, day) -> units so far
    seen: dict[tuple[str, str, int, date], int] = {}  # (rule, code, price, day) -> first line
    diagnosis_ok: dict[str, bool] = {}
    by_code = audit.by_code
    every = audit.every_code
    visit = bill.visit_type
    for line in bill.lines:
        rules = by_code.get(line.code, ())
        if every:
            rules = rules + every if rules else every
        if not rules:
            continue
        day = line.service_on or on
        for rule in rules:
            if rule.visit_types and visit not in rule.visit_types:
                continue
            kind = rule.kind
            amount = 0
            detail = ""
            if kind is _DAILY:
                key = (rule.rule_id, line.code, day)
                units = per_day.get(key, 0) + line.quantity
                per_day[key] = units
                over = min(line.quantity, units - rule.per_day_max)
                if over > 0:
                    amount = over * line.unit_price_fen
                    detail = f"{units} units on {day.isoformat()}, at most {rule.per_day_max}"
            elif kind is _DUPLICATE:
                first = seen.setdefault((rule.rule_id, line.code, line.unit_price_fen, day), line.line_no)
                if first != line.line_no:
                    amount = line.unit_price_fen * line.quantity
                    detail = f"{line.code} charged again on {day.isoformat()} (first on line {first})"
            elif kind is _DIAGNOSIS:
                ok = diagnosis_ok.get(rule.rule_id)
                if ok is None:
                    ok = any(d.startswith(rule.diagnoses) for d in bill.diagnoses)
                    diagnosis_ok[rule.rule_id] = ok
                if not ok:
                    amount = line.unit_price_fen * line.quantity
                    detail = f"{line.code} is paid only for diagnoses {', '.join(rule.diagnoses)}"
            elif kind is _SEX:
                if sex is not rule.sex:
                    amount = line.unit_price_fen * line.quantity
                    detail = f"{line.code} is for sex {rule.sex}"
            elif kind is _AGE:
                if (rule.min_age is not None and age < rule.min_age) or (
                    rule.max_age is not None and age > rule.max_age
                ):
                    amount = line.unit_price_fen * line.quantity
                    ages = (
                        f"{rule.min_age or 0}-{rule.max_age}"
                        if rule.max_age is not None
                        else f"{rule.min_age}+"
                    )
                    detail = f"{line.code} is for ages {ages}, not {age}"
            elif kind is _VISIT_TYPE:
                if visit not in rule.allowed_visit_types:
                    amount = line.unit_price_fen * line.quantity
                    detail = f"{line.code} is not allowed at a {visit} visit"
            elif kind is _DAYS_SUPPLY:
                allowed = rule.days_max * rule.units_per_day
                if line.quantity > allowed:
                    amount = (line.quantity - allowed) * line.unit_price_fen
                    days = -(-line.quantity // rule.units_per_day)
                    detail = f"{days} days of supply, at most {rule.days_max}"
            if detail:
                flags.append(AuditFlag(rule.rule_id, rule.severity, line.line_no, amount, kind, detail))
    return tuple(flags)


_SEX, _AGE, _DUPLICATE, _DAILY = AuditKind.SEX, AuditKind.AGE, AuditKind.DUPLICATE, AuditKind.DAILY_QUANTITY
_DIAGNOSIS, _VISIT_TYPE, _DAYS_SUPPLY = AuditKind.DIAGNOSIS, AuditKind.VISIT_TYPE, AuditKind.DAYS_SUPPLY


def blocking_flag(audit: AuditPolicy, flags: tuple[AuditFlag, ...]) -> AuditFlag | None:
    """The first flag whose severity the policy blocks on, if any."""
    for flag in flags:
        if flag.severity in audit.blocking:
            return flag
    return None
