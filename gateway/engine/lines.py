"""Line level: split each fee line into full self-pay, over-limit, first self-pay and in-scope.

    amount = full self-pay + over-limit + first self-pay + in-scope      (exactly, per line)

Order of the steps (RULES.md section 3): not covered (class C, not effective, a restriction) makes the
whole line full self-pay; units beyond the per-visit quantity limit are full self-pay; the part of the
unit price above the price limit is over-limit; class B pays its first self-pay ratio of the rest,
rounded half-up to the fen; what is left is in scope."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import NamedTuple

from gateway.engine.model import (
    BillLine,
    CatalogEntry,
    ItemClass,
    ItemKind,
    Scheme,
    Sex,
    VisitType,
    grade,
)
from gateway.engine.money import apply_bp
from gateway.engine.result import LineSplit

STAY_VISITS = frozenset({VisitType.INPATIENT, VisitType.MATERNITY})  # a delivery is an inpatient stay


class LineContext(NamedTuple):
    """Everything about the visit a line restriction may look at."""

    on: date
    scheme: Scheme
    visit_type: VisitType
    institution_level: int
    sex: Sex
    age: int
    registered_diseases: frozenset[str]
    first_selfpay_bp: Mapping[ItemKind, int]


def coverage_flag(entry: CatalogEntry, ctx: LineContext, day: date) -> str | None:
    """Why the entry is not covered for this line (served on `day`), or None when it is."""
    if entry.effective_from > day or (entry.effective_to is not None and day > entry.effective_to):
        return "NOT_EFFECTIVE"
    if entry.item_class is ItemClass.C:
        return "CLASS_C"
    if entry.min_level is not None and grade(ctx.institution_level) < entry.min_level:
        return "MIN_LEVEL"
    if entry.inpatient_only and ctx.visit_type not in STAY_VISITS:
        return "INPATIENT_ONLY"
    if entry.special_diseases and not (entry.special_diseases & ctx.registered_diseases):
        return "SPECIAL_DISEASE_ONLY"
    if entry.sex is not None and entry.sex is not ctx.sex:
        return "SEX"
    if (entry.age_min is not None and ctx.age < entry.age_min) or (
        entry.age_max is not None and ctx.age > entry.age_max
    ):
        return "AGE"
    return None


def first_selfpay_bp(entry: CatalogEntry, ctx: LineContext) -> int:
    if entry.item_class is not ItemClass.B:
        return 0
    by_scheme = entry.selfpay_bp_by_scheme.get(ctx.scheme)
    if by_scheme is not None:
        return by_scheme
    if entry.selfpay_bp is not None:
        return entry.selfpay_bp
    return ctx.first_selfpay_bp.get(entry.kind, 0)


def split_line(line: BillLine, entry: CatalogEntry, ctx: LineContext, quantity_used_before: int) -> LineSplit:
    """`quantity_used_before`: units of the same code on earlier lines of this bill, so a per-visit
    quantity limit holds across lines."""
    price = line.unit_price_fen
    amount = price * line.quantity
    not_covered = coverage_flag(entry, ctx, line.service_on or ctx.on)
    if not_covered is not None:
        return LineSplit(
            line.line_no,
            entry.code,
            entry.item_class,
            amount,
            amount,
            0,
            0,
            0,
            0,
            entry.price_limit_fen,
            (not_covered,),
        )

    flags: tuple[str, ...] = ()
    covered_qty = line.quantity
    full_selfpay = 0
    qty_max = entry.quantity_per_visit_max
    if qty_max is not None and quantity_used_before + line.quantity > qty_max:
        covered_qty = max(0, qty_max - quantity_used_before)
        full_selfpay = price * (line.quantity - covered_qty)
        flags = ("OVER_QUANTITY",)

    over_limit = 0
    limit = entry.price_limit_fen
    if limit is not None and price > limit:
        over_limit = (price - limit) * covered_qty
        flags += ("OVER_PRICE_LIMIT",)

    ratio = first_selfpay_bp(entry, ctx)
    first_selfpay = apply_bp(amount - full_selfpay - over_limit, ratio)
    in_scope = amount - full_selfpay - over_limit - first_selfpay
    return LineSplit(
        line.line_no,
        entry.code,
        entry.item_class,
        amount,
        full_selfpay,
        over_limit,
        first_selfpay,
        in_scope,
        ratio,
        limit,
        flags,
    )
