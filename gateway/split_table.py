"""A split as a table a cashier or a policy officer can read (amounts in yuan). Works on the protocol's
Split message, so the offline `split` command and the demo client print the same thing."""

from __future__ import annotations

from typing import Any

from gateway import codec
from gateway.engine import Rejected, SplitOutcome
from gateway.engine.money import yuan
from gateway.protos import pb

CLASS_NAMES = {pb.ITEM_CLASS_A: "A", pb.ITEM_CLASS_B: "B", pb.ITEM_CLASS_C: "C"}


def render(outcome: SplitOutcome, title: str = "") -> str:
    if isinstance(outcome, Rejected):
        where = f" (line {outcome.line_no})" if outcome.line_no else ""
        head = [title] if title else []
        return "\n".join(
            [*head, f"  REJECTED {int(outcome.code)} {outcome.code.name}{where}: {outcome.reason}"]
        )
    return render_split(codec.encode_split(outcome, "", ""), title)


def render_split(s: Any, title: str = "") -> str:
    out = [title] if title else []
    out.append(
        f"  {'line':>4} {'code':<9} {'cls':<3} {'amount':>11} {'self-pay':>10} {'over-lim':>10}"
        f" {'first-sp':>10} {'in-scope':>11}  flags"
    )
    for ln in s.lines:
        cls = CLASS_NAMES.get(ln.item_class, "?")
        out.append(
            f"  {ln.line_no:>4} {ln.code:<9} {cls:<3} {yuan(ln.amount_fen):>11}"
            f" {yuan(ln.full_selfpay_fen):>10} {yuan(ln.over_limit_fen):>10} {yuan(ln.first_selfpay_fen):>10}"
            f" {yuan(ln.in_scope_fen):>11}  {','.join(ln.flags)}"
        )
    out.append(
        f"  {'':>4} {'total':<9} {'':<3} {yuan(s.total_fen):>11} {yuan(s.full_selfpay_fen):>10}"
        f" {yuan(s.over_limit_fen):>10} {yuan(s.first_selfpay_fen):>10} {yuan(s.in_scope_fen):>11}"
    )
    out.append(f"  deductible paid        {yuan(s.deductible_fen):>12}")
    for f in s.funds:
        left = "" if f.remaining_max_fen < 0 else f"   (left this year {yuan(f.remaining_max_fen)})"
        out.append(f"  fund {f.fund_code} {f.layer:<18}{yuan(f.amount_fen):>12}{left}")
    out.append(f"  funds total            {yuan(s.fund_total_fen):>12}")
    if s.basic_over_cap_fen:
        uncapped, over = yuan(s.basic_uncapped_fen), yuan(s.basic_over_cap_fen)
        out.append(f"  basic before its max  {uncapped:>13}   (above the annual maximum {over})")
    if s.per_disease:
        out.append(f"  per disease {s.per_disease:<10} institution bears {yuan(s.institution_fen)}")
    after = yuan(s.account_balance_after_fen)
    out.append(f"  personal account       {yuan(s.account_fen):>12}   (balance after {after})")
    out.append(f"  cash                   {yuan(s.cash_fen):>12}")
    scheme = {pb.SCHEME_EMPLOYEE: "employee", pb.SCHEME_RESIDENT: "resident"}.get(s.scheme, "?")
    tags = f"  policy {s.policy_version}, catalog {s.catalog_version}, {scheme} tier {s.tier}"
    out.append(tags + (f", {', '.join(s.flags)}" if s.flags else ""))
    for flag in s.audit_flags:
        where = f"  audit {flag.rule_id} ({flag.severity}) line {flag.line_no}"
        out.append(f"{where}: {flag.detail} [{yuan(flag.amount_fen)}]")
    return "\n".join(out)
