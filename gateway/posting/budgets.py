"""Monthly fund budgets per district (the seeds ask for risk warning on fund spending): a TOML file a
fund manager keeps, exported as a gauge beside the month's booked spend so an alert can compare them.

    [[budget]]
    region = "500000"
    district = "500103"
    fund_code = "310100"
    month_fen = 1200000000   # 12,000,000.00 yuan a month

and per-institution annual global budgets (总额预算, Ziyang's compound payment), each compared with
what the funds have paid the institution this year (medsettle_institution_fund_spend_year_fen):

    [[institution_budget]]
    institution = "H50010300001"
    year = 2026
    fund_fen = 30000000000   # 300,000,000.00 yuan of fund payments in 2026
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from rules_cache.reader import DataError, Reader

Budgets = dict[tuple[str, str, str], int]
InstitutionBudgets = dict[tuple[str, int], int]  # (institution, year) -> fund payments allowed, fen
INSTITUTION_BUDGETS_MAX = 1_000_000  # one a year for every designated institution of a large province


def read(path: Path) -> Reader:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DataError(path.name, "", f"not valid TOML: {exc}") from None
    return Reader(data, path.name)


def load_institution_budgets(path: Path) -> InstitutionBudgets:
    top = read(path)
    top.seen.add("budget")
    out: InstitutionBudgets = {}
    for i, r in enumerate(top.tables("institution_budget")):
        if i >= INSTITUTION_BUDGETS_MAX:
            raise top.error(f"more than {INSTITUTION_BUDGETS_MAX} institution budgets", "institution_budget")
        key = (r.text("institution"), r.integer("year", minimum=2000, maximum=2200))
        if key in out:
            raise r.error(f"a second budget for institution {key[0]} in {key[1]}")
        out[key] = r.integer("fund_fen", minimum=1)
        r.done()
    top.done()
    return out


def load_budgets(path: Path) -> Budgets:
    top = read(path)
    top.seen.add("institution_budget")  # load_institution_budgets reads them
    out: Budgets = {}
    for r in top.tables("budget"):
        key = (r.text("region"), r.text("district"), r.text("fund_code"))
        if key in out:
            raise r.error(f"a second budget for {'/'.join(key)}")
        out[key] = r.integer("month_fen", minimum=1)
        r.done()
    top.done()
    return out
