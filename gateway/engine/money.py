"""Integer money. Every amount is fen (0.01 yuan); every ratio is basis points (10000 = 100%).

There is exactly one rounding rule in the product: a product of fen and basis points is rounded once,
half-up, to the fen (`apply_bp`). Bill-level amounts are computed from the unrounded sum of products
(`round_bp_sum`) and rounded once. Parts are then derived by subtraction, so they add back exactly.
"""

from __future__ import annotations

BP_ONE = 10_000  # 100% in basis points


class InvariantViolation(Exception):
    """A money invariant broke. This is a programmer error: it is raised, never returned, and it is not
    an `assert`, so `python -O` keeps the check."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


def round_bp_sum(numerator: int) -> int:
    """Round a sum of (fen x basis points) products to fen, half-up. Inputs are never negative."""
    if numerator < 0:
        raise InvariantViolation(f"cannot round a negative amount: {numerator}")
    return (numerator + BP_ONE // 2) // BP_ONE


def apply_bp(amount_fen: int, ratio_bp: int) -> int:
    """amount x ratio, rounded half-up to the fen."""
    return round_bp_sum(amount_fen * ratio_bp)


def clamp_bp(ratio_bp: int) -> int:
    return 0 if ratio_bp < 0 else BP_ONE if ratio_bp > BP_ONE else ratio_bp


def yuan(amount_fen: int) -> str:
    """Human display only: 12345 -> '123.45'."""
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{cents:02d}"
