"""Yuan with two decimals on the wire, integer fen inside; no float ever touches an amount.

JSON numbers are read as their text (json.loads(parse_float=str)), so 4.52 arrives as "4.52" and is
turned into 452 fen by integer arithmetic; amounts go out as `Fixed` values, written by `dumps` as the
decimal text of an integer (452 -> 4.52). Clients send amounts as numbers or as strings: both are read."""

from __future__ import annotations

import json
import re
from typing import Any

DECIMAL = re.compile(r"^([+-]?)(\d{1,16})(?:\.(\d{1,8}))?$")
AMOUNT_FEN_MAX = 10**15  # n(16,2): far beyond any bill (BILL_TOTAL_MAX_FEN), within Lua's exact integers


class BadNumber(ValueError):
    """A field that is not a number of the expected shape; the message says what is wrong."""


def loads(body: bytes | str) -> Any:
    """JSON with every non-integer number kept as its text: no float is ever made."""
    return json.loads(body, parse_float=str, parse_constant=reject_constant)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def scaled(value: Any, decimals: int) -> int:
    """A JSON number or numeric string as an integer count of 10^-decimals: "4.52" -> 452 (decimals 2).
    More decimals than `decimals` are refused unless they are zeros ("1.000" is 1 unit)."""
    if isinstance(value, bool) or value is None:
        raise BadNumber("a number is required")
    text = str(value).strip() if isinstance(value, int | str) else None
    if text is None:
        raise BadNumber("a number is required")
    m = DECIMAL.match(text)
    if m is None:
        raise BadNumber(f"{text[:20]!r} is not a decimal number")
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if len(frac) > decimals and frac[decimals:].strip("0"):
        raise BadNumber(f"{text} has more than {decimals} decimals")
    frac = (frac + "0" * decimals)[:decimals]
    scale: int = 10**decimals
    units = int(whole) * scale + (int(frac) if frac else 0)
    return -units if sign == "-" else units


def fen(value: Any) -> int:
    """Yuan with at most two decimals, as fen."""
    out = scaled(value, 2)
    if abs(out) > AMOUNT_FEN_MAX:
        raise BadNumber("beyond n(16,2)")
    return out


class Fixed:
    """An exact decimal for the JSON output: `units` of 10^-decimals (452, 2 -> 4.52)."""

    __slots__ = ("decimals", "units")

    def __init__(self, units: int, decimals: int = 2) -> None:
        self.units, self.decimals = units, decimals

    def text(self) -> str:
        whole, part = divmod(abs(self.units), 10**self.decimals)
        sign = "-" if self.units < 0 else ""
        return f"{sign}{whole}.{part:0{self.decimals}d}" if self.decimals else f"{sign}{whole}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fixed) and (self.units, self.decimals) == (other.units, other.decimals)

    def __hash__(self) -> int:
        return hash((self.units, self.decimals))

    def __repr__(self) -> str:
        return f"Fixed({self.text()})"


def yuan(amount_fen: int) -> Fixed:
    return Fixed(amount_fen, 2)


def ratio(bp: int) -> Fixed:
    """Basis points as a ratio with four decimals: 500 -> 0.0500."""
    return Fixed(bp, 4)


MARK = "\x01"  # a Fixed goes through the C encoder as this mark + its digits, then loses its quotes
MARKED = re.compile(r'"\\u0001(-?\d+(?:\.\d+)?)"')


def as_mark(value: Any) -> str:
    if isinstance(value, Fixed):
        return MARK + value.text()
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """JSON text in which Fixed values are numbers with their exact decimals (4.52, 0.0500). The standard
    library's C encoder writes everything (json cannot emit a number it did not make from an int or a
    float): a Fixed becomes the string "\\u0001<digits>", whose quotes and mark are then removed. No text
    we answer is such a string on its own: control characters are refused in every field we echo."""
    text = json.dumps(value, ensure_ascii=False, default=as_mark, separators=(",", ":"))
    return MARKED.sub(r"\1", text)
