"""A split as a table a cashier or a policy officer can read (amounts in yuan)."""

from __future__ import annotations

from gateway.engine import Rejected, Split, SplitOutcome
from gateway.engine.money import yuan


def render(outcome: SplitOutcome, title: str = "") -> str:
    out = [title] if title else []
    if isinstance(outcome, Rejected):
        where = f" (line {outcome.line_no})" if outcome.line_no else ""
        out.append(f"  REJECTED {int(outcome.code)} {outcome.code.name}{where}: {outcome.reason}")
        return "\n".join(out)
    assert isinstance(outcome, Split)
    s = outcome
    out.append(
        f"  {'line':>4} {'code':<9} {'cls':<3} {'amount':>11} {'self-pay':>10} {'over-lim':>10}"
        f" {'first-sp':>10} {'in-scope':>11}  flags"
    )
    for ln in s.lines:
        out.append(
            f"  {ln.line_no:>4} {ln.code:<9} {ln.item_class.value:<3} {yuan(ln.amount_fen):>11}"
            f" {yuan(ln.full_selfpay_fen):>10} {yuan(ln.over_limit_fen):>10} {yuan(ln.first_selfpay_fen):>10}"
            f" {yuan(ln.in_scope_fen):>11}  {','.join(ln.flags)}"
        )
    out.append(
        f"  {'':>4} {'total':<9} {'':<3} {yuan(s.total_fen):>11} {yuan(s.full_selfpay_fen):>10}"
        f" {yuan(s.over_limit_fen):>10} {yuan(s.first_selfpay_fen):>10} {yuan(s.in_scope_fen):>11}"
    )
    out.append(f"  deductible paid {yuan(s.deductible_fen):>12}")
    for f in s.funds:
        left = "" if f.remaining_max_fen is None else f"   (left this year {yuan(f.remaining_max_fen)})"
        out.append(f"  fund {f.fund_code} {f.layer:<18} {yuan(f.amount_fen):>12}{left}")
    out.append(f"  funds total            {yuan(s.fund_total_fen):>12}")
    after = yuan(s.account_balance_after_fen)
    out.append(f"  personal account       {yuan(s.account_fen):>12}   (balance after {after})")
    out.append(f"  cash                   {yuan(s.cash_fen):>12}")
    tags = f"  policy {s.policy_version}, catalog {s.catalog_version}, {s.scheme} tier {s.tier}"
    out.append(tags + (f", {', '.join(s.flags)}" if s.flags else ""))
    return "\n".join(out)
