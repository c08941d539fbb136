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
    """Every flag the rules raise on this bill, in line order, then rule order."""
    flags: list[AuditFlag] = []
    per_day: dict[tuple[str, str, date], int] = {}  # (rule, code, day) -> units so far
    seen: dict[tuple[str, str, int, date], int] = {}  # (rule, code, price, day) -> first line
    diagnoses = bill.diagnoses
    for line in bill.lines:
        rules = audit.by_code.get(line.code, ())
        if audit.every_code:
            rules = (*rules, *audit.every_code)
        if not rules:
            continue
        day = line.service_on or on
        amount = line.unit_price_fen * line.quantity
        for rule in rules:
            if rule.visit_types and bill.visit_type not in rule.visit_types:
                continue
            hit: tuple[int, str] | None = None
            kind = rule.kind
            if kind is AuditKind.SEX:
                if sex is not rule.sex:
                    hit = amount, f"{line.code} is for sex {rule.sex}"
            elif kind is AuditKind.AGE:
                if (rule.min_age is not None and age < rule.min_age) or (
                    rule.max_age is not None and age > rule.max_age
                ):
                    ages = (
                        f"{rule.min_age or 0}-{rule.max_age}"
                        if rule.max_age is not None
                        else f"{rule.min_age}+"
                    )
                    hit = amount, f"{line.code} is for ages {ages}, not {age}"
            elif kind is AuditKind.DUPLICATE:
                key = (rule.rule_id, line.code, line.unit_price_fen, day)
                first = seen.setdefault(key, line.line_no)
                if first != line.line_no:
                    hit = amount, f"{line.code} charged again on {day} (first on line {first})"
            elif kind is AuditKind.DAILY_QUANTITY:
                units = per_day.get((rule.rule_id, line.code, day), 0)
                per_day[(rule.rule_id, line.code, day)] = units + line.quantity
                over = min(line.quantity, units + line.quantity - rule.per_day_max)
                if over > 0:
                    hit = (
                        over * line.unit_price_fen,
                        f"{units + line.quantity} units on {day}, at most {rule.per_day_max}",
                    )
            elif kind is AuditKind.DIAGNOSIS:
                if not any(d.startswith(p) for d in diagnoses for p in rule.diagnoses):
                    hit = amount, f"{line.code} is paid only for diagnoses {', '.join(rule.diagnoses)}"
            elif kind is AuditKind.VISIT_TYPE:
                if bill.visit_type not in rule.allowed_visit_types:
                    hit = amount, f"{line.code} is not allowed at a {bill.visit_type} visit"
            elif kind is AuditKind.DAYS_SUPPLY:
                allowed = rule.days_max * rule.units_per_day
                if line.quantity > allowed:
                    days = -(-line.quantity // rule.units_per_day)
                    hit = (
                        (line.quantity - allowed) * line.unit_price_fen,
                        f"{days} days of supply, at most {rule.days_max}",
                    )
            if hit is not None:
                flags.append(AuditFlag(rule.rule_id, rule.severity, line.line_no, hit[0], kind, hit[1]))
    return tuple(flags)


def blocking_flag(audit: AuditPolicy, flags: tuple[AuditFlag, ...]) -> AuditFlag | None:
    """The first flag whose severity the policy blocks on, if any."""
    for flag in flags:
        if flag.severity in audit.blocking:
            return flag
    return None
