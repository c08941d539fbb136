"""`medsettle close-month`: close an institution's month into a clearing application (3203), write the
applications and the paying agencies' payment files, undo an unpaid application (3204), or record that
one was paid. Every action writes an audit line with who did it (docs/OPERATIONS.md, Month end)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ACCOUNTS_FILE = "institution-accounts.csv"


def register(sub: Any) -> None:
    from gateway import cli

    p = sub.add_parser(
        "close-month",
        help="close a month into clearing applications (3203) and payment files; undo (3204); paid",
    )
    p.add_argument("--month", help="YYYY-MM: the month to close, or whose files to write again")
    p.add_argument(
        "--institution", action="append", help="only these (repeat); default: every one with entries"
    )
    p.add_argument("--out", help="write the 3203 applications and payment files here")
    p.add_argument("--files-only", action="store_true", help="write the files of the month's applications")
    p.add_argument("--undo", metavar="APPLICATION_ID", help="withdraw an application not yet paid (3204)")
    p.add_argument("--paid", metavar="APPLICATION_ID", help="record that the agency paid the application")
    p.add_argument("--accounts", help=f"the institutions' bank accounts (default: citydata/{ACCOUNTS_FILE})")
    cli.secret_flags(p, "ledger", "the ledger (default with --data-dir: its ledger.db)")
    cli.secret_flags(p, "redis", "for the posted-through watermark (default: --data-dir's running Redis)")
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR, help="an embedded default's folder")
    p.add_argument("--audit-log", default=None, help="default: $MEDSETTLE_AUDIT_LOG or <data-dir>/audit.log")
    p.add_argument("--operator", help="who acts (recorded; default: the login name)")
    p.add_argument("--timezone", default="Asia/Shanghai")
    p.set_defaults(func=close_month_cmd, audited=True)


def close_month_cmd(args: argparse.Namespace) -> int:
    from adapters.citydata_files import citydata_dir
    from adapters.ledger.store import Ledger
    from gateway import cli
    from gateway.logs import AUDIT_LOG
    from gateway.posting import month_end as me

    dsn = cli.ledger_dsn_of(args) or f"sqlite:///{(Path(args.data_dir) / 'ledger.db').resolve()}"
    ledger = Ledger(dsn)
    operator = cli.operator_of(args)
    zone = ZoneInfo(args.timezone)
    now = datetime.now(zone)
    try:
        if args.undo or args.paid:
            to, application_id = ("undone", args.undo) if args.undo else ("paid", args.paid)
            found = me.change_state(ledger, application_id, to, now)
            AUDIT_LOG.info(
                f"clearing application {to}",
                extra={"event": f"clearing_{to}", "operator": operator, "application_id": application_id,
                       "institution": found.institution, "month": found.month},
            )  # fmt: skip
            print(f"{application_id} ({found.institution}, {found.month}): {to}")
            return 0
        if not args.month:
            print(
                "medsettle close-month: --month YYYY-MM (or --undo / --paid APPLICATION_ID)", file=sys.stderr
            )
            return 2
        accounts = me.load_accounts(Path(args.accounts) if args.accounts else citydata_dir() / ACCOUNTS_FILE)
        if args.files_only:
            done = me.applications(ledger, args.month)
        else:
            watermark = asyncio.run(posted_through(args, zone))
            done = me.close_month(ledger, args.month, args.institution, watermark, now, accounts)
            for a in done:
                AUDIT_LOG.info(
                    "month closed",
                    extra={"event": "month_closed", "operator": operator, "application_id": a.application_id,
                           "institution": a.institution, "month": a.month,
                           "payable_fen": a.totals.payable_fen, "settlements": a.totals.settlements},
                )  # fmt: skip
        for a in done:
            t = a.totals
            print(
                f"{a.application_id}  {a.institution}  {a.month}  {a.state:<7}  {t.settlements:6d}"
                f" settlement(s)  total {me.yuan(t.total_fen)}  fund {me.yuan(t.fund_fen)}  account"
                f" {me.yuan(t.account_fen)}  payable {me.yuan(t.payable_fen)}"
                + (f"  (adjusts {', '.join(sorted(a.adjustments))})" if a.adjustments else "")
            )
        if not done:
            print(f"{args.month}: nothing to close (no entries, or every institution closed already)")
        if args.out:
            for path in me.write_month_files(Path(args.out), me.applications(ledger, args.month), accounts):
                print(f"wrote {path}")
        return 0
    except me.MonthEndError as exc:
        print(f"medsettle close-month: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()


async def posted_through(args: argparse.Namespace, zone: ZoneInfo) -> datetime:
    """The watermark from Redis (gateway/ledger_service.py): everything committed before it is booked."""
    from gateway import cli
    from gateway.config import Config
    from gateway.ledger_service import LedgerService
    from gateway.server import redis_client

    url = cli.deadletters_url(args)
    client = redis_client(url, Config())
    try:
        watermark = await LedgerService(None, client, lambda: datetime.now(zone)).posted_through()
    finally:
        await client.aclose()
    return datetime.fromisoformat(watermark)
