"""Monthly fund budgets per district (the seeds ask for risk warning on fund spending): a TOML file a
fund manager keeps, exported as a gauge beside the month's booked spend so an alert can compare them.

    [[budget]]
    region = "500000"
    district = "500103"
    fund_code = "310100"
    month_fen = 1200000000   # 12,000,000.00 yuan a month
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from rules_cache.reader import DataError, Reader

Budgets = dict[tuple[str, str, str], int]


def load_budgets(path: Path) -> Budgets:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DataError(path.name, "", f"not valid TOML: {exc}") from None
    top = Reader(data, path.name)
    out: Budgets = {}
    for r in top.tables("budget"):
        key = (r.text("region"), r.text("district"), r.text("fund_code"))
        if key in out:
            raise r.error(f"a second budget for {'/'.join(key)}")
        out[key] = r.integer("month_fen", minimum=1)
        r.done()
    top.done()
    return out
