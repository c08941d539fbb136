"""Month end: an institution's month is closed into a clearing application (the national platform's
3203, 清算申请), the paying agencies get payment files their finance systems take, and an application not
yet paid can be undone (3204, 清算申请撤销).

Closing freezes the month for that institution: the ledger books nothing more into it; an entry that
arrives later (a reversal next month is next month's anyway, but a settlement committed on the 31st and
posted after the close, or one replayed from the dead letters) goes to the next open month, marked with
the month it belongs to, and shows in that month's application as an adjustment of the earlier one. A
month is closed only once everything committed in it is in the ledger: its last instant is before the
posted-through watermark (no stream entry and no dead letter older than the month's end).

Money is what the ledger says, to the fen: the payable of an application is what the paying agency owes
the institution for the month (fund payments and personal-account payments; the patients paid the cash
part at the counter), and a payment file's total is the sum of its applications' payables."""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from adapters.ledger.store import Ledger, next_month
from gateway.engine.money import yuan

__all__ = ["yuan"]  # re-exported: the command prints yuan from fen the same way

# 清算类别 (clr_type) of the national interface, by visit type
CLEARING_TYPES = {
    "outpatient": "11",  # 普通门诊
    "special": "14",  # 门诊慢特病
    "inpatient": "21",  # 住院
    "pharmacy": "41",  # 定点零售药店购药
    "maternity": "51",  # 生育
}
CLEARING_WAY = "1"  # 清算方式: by item (按项目), what fee-for-service settlement gives
PERSON_PAYEE = "person:"  # the payee of a claim after the fact
ACCOUNT_FIELDS = ("code", "bank_name", "account_name", "account_no")
CLOSES_LISTED_MAX = 100_000  # one month's applications in one listing


class MonthEndError(ValueError):
    """A close, an undo or a payment that cannot be done, with why."""


@dataclass(frozen=True, slots=True)
class BankAccount:
    institution: str
    bank_name: str
    account_name: str
    account_no: str


def load_accounts(path: Path) -> dict[str, BankAccount]:
    """The institutions' bank accounts (a CSV the bureau's finance office keeps: code, bank_name,
    account_name, account_no): where each payment goes."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or tuple(reader.fieldnames) != ACCOUNT_FIELDS:
            raise MonthEndError(f"{path.name}: the header must be {','.join(ACCOUNT_FIELDS)}")
        out: dict[str, BankAccount] = {}
        for n, row in enumerate(reader, start=2):
            values = [str(row[k] or "").strip() for k in ACCOUNT_FIELDS]
            if not all(values):
                raise MonthEndError(f"{path.name} line {n}: every column is required")
            if values[0] in out:
                raise MonthEndError(f"{path.name} line {n}: a second account for {values[0]}")
            out[values[0]] = BankAccount(*values)
    return out


@dataclass(frozen=True, slots=True)
class Line:
    """What an application claims for one clearing type, one paying agency, or one fund."""

    settlements: int  # settled minus reversed
    total_fen: int  # medfee_sumamt
    fund_fen: int  # fund_appy_sum
    account_fen: int  # acct_pay
    cash_fen: int  # cash_payamt

    @property
    def payable_fen(self) -> int:
        return self.fund_fen + self.account_fen


@dataclass(frozen=True, slots=True)
class Application:
    application_id: str  # clr_appy_evt_id
    institution: str
    month: str
    state: str  # applied | paid | undone
    closed_at: str
    totals: Line
    by_clearing_type: Mapping[str, Line]
    by_paying_party: Mapping[str, Line]
    funds: Mapping[str, int]  # fund code -> fen
    adjustments: Mapping[str, Line] = field(default_factory=dict)  # earlier month -> late entries

    def summary_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    def national(self) -> dict[str, Any]:
        """The 3203 input, one per clearing type, in the interface's field names (yuan, two decimals)."""
        first = date.fromisoformat(self.month + "-01")
        last = date.fromisoformat(next_month(self.month) + "-01").toordinal() - 1
        return {
            "clr_appy_evt_id": self.application_id,
            "fixmedins_code": self.institution,
            "setlym": self.month.replace("-", ""),
            "items": [
                {
                    "clr_type": clr_type, "clr_way": CLEARING_WAY, "psntime": line.settlements,
                    "medfee_sumamt": yuan(line.total_fen), "fund_appy_sum": yuan(line.fund_fen),
                    "acct_pay": yuan(line.account_fen), "cash_payamt": yuan(line.cash_fen),
                    "begndate": first.isoformat(), "enddate": date.fromordinal(last).isoformat(),
                }
                for clr_type, line in sorted(self.by_clearing_type.items())
            ],
        }  # fmt: skip


def application_from(row: Sequence[Any]) -> Application:
    application_id, state, summary = str(row[0]), str(row[1]), json.loads(row[2])

    def line(v: Mapping[str, int]) -> Line:
        return Line(**{k: int(x) for k, x in v.items()})

    return Application(
        application_id=application_id,
        institution=summary["institution"],
        month=summary["month"],
        state=state,
        closed_at=summary["closed_at"],
        totals=line(summary["totals"]),
        by_clearing_type={k: line(v) for k, v in summary["by_clearing_type"].items()},
        by_paying_party={k: line(v) for k, v in summary["by_paying_party"].items()},
        funds={k: int(v) for k, v in summary["funds"].items()},
        adjustments={k: line(v) for k, v in summary["adjustments"].items()},
    )


def month_bounds(month: str) -> tuple[str, str]:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise MonthEndError(f"month {month!r}: YYYY-MM")
    return month, next_month(month)


# ---------------------------------------------------------------- closing


def sums(rows: Sequence[Sequence[Any]]) -> Line:
    n = t = f = a = c = 0
    for kind, total, fund, account, cash in rows:
        n += {"settle": 1, "reverse": -1}.get(str(kind), 0)
        t, f, a, c = t + int(total), f + int(fund), a + int(account), c + int(cash)
    return Line(n, t, f, a, c)


def grouped(rows: Sequence[Sequence[Any]]) -> dict[str, Line]:
    """Rows of (key, kind, total, fund, account, cash), summed per key."""
    by: dict[str, list[Sequence[Any]]] = {}
    for key, *rest in rows:
        by.setdefault(str(key), []).append(rest)
    return {k: sums(v) for k, v in sorted(by.items())}


def compute(cur: Any, ledger: Ledger, institution: str, month: str) -> dict[str, Any]:
    """An institution's month from the journal, inside the closing transaction."""
    amounts = "kind, total_fen, fund_total_fen, account_fen, cash_fen"

    def rows(select: str, extra: str = "") -> list[Sequence[Any]]:
        cur.execute(
            ledger.sql(f"SELECT {select} FROM journal WHERE institution = ? AND month = ?{extra}"),
            (institution, month),
        )
        return list(cur.fetchall())

    cur.execute(
        ledger.sql(
            "SELECT f.fund_code, SUM(f.amount_fen) FROM journal_funds f JOIN journal j ON j.entry_id ="
            " f.entry_id WHERE j.institution = ? AND j.month = ? GROUP BY f.fund_code ORDER BY f.fund_code"
        ),
        (institution, month),
    )
    funds = {str(code): int(amount) for code, amount in cur.fetchall() if int(amount)}
    by_visit = grouped(rows(f"visit, {amounts}"))
    return {
        "totals": sums(rows(amounts)),
        "by_clearing_type": {CLEARING_TYPES.get(v, "99"): line for v, line in by_visit.items()},
        "by_paying_party": grouped(rows(f"paying_party, {amounts}")),
        "funds": funds,
        "adjustments": grouped(rows(f"origin_month, {amounts}", " AND origin_month <> ''")),
    }


def close_month(
    ledger: Ledger,
    month: str,
    institutions: Sequence[str] | None,
    posted_through: datetime,
    now: datetime,
    accounts: Mapping[str, BankAccount],
) -> list[Application]:
    """Closes the month for each institution that has entries in it (or those named), in one
    transaction: all or none. Refused while the month is not over, while anything committed in it is
    not in the ledger yet, for an institution already closed, or one without a bank account."""
    first, following = month_bounds(month)
    if now.strftime("%Y-%m") <= month:
        raise MonthEndError(f"{month} is not over: it can be closed from {following}-01")
    end = datetime.fromisoformat(following + "-01T00:00:00").replace(tzinfo=now.tzinfo)
    if posted_through < end:
        raise MonthEndError(
            f"not everything committed in {month} is in the ledger yet (posted through"
            f" {posted_through.isoformat(timespec='seconds')}): a posting backlog, or dead letters to handle"
            " (medsettle deadletters list); close once posting has passed the month's end"
        )
    out: list[Application] = []
    with ledger.transaction() as cur:
        if ledger.postgres:  # no entry is booked into the month while it is being closed
            cur.execute("LOCK TABLE journal IN EXCLUSIVE MODE")
        cur.execute(
            ledger.sql("SELECT DISTINCT institution FROM journal WHERE month = ? ORDER BY institution"),
            (first,),
        )
        # claims after the fact are payables to persons (person:<id>), paid by the agency, not institutions'
        # clearing applications (gateway/claim_service.py)
        present = [str(r[0]) for r in cur.fetchall() if not str(r[0]).startswith(PERSON_PAYEE)]
        wanted = list(institutions) if institutions else present
        cur.execute(
            ledger.sql("SELECT institution FROM month_closes WHERE month = ? AND state <> 'undone'"), (first,)
        )
        closed = {str(r[0]) for r in cur.fetchall()}
        if institutions:
            again = sorted(set(wanted) & closed)
            if again:
                raise MonthEndError(f"{month} is closed already for {', '.join(again)} (undo it first)")
        wanted = [i for i in wanted if i not in closed]
        no_account = [i for i in wanted if i not in accounts]
        if no_account:
            raise MonthEndError(
                f"no bank account for {', '.join(no_account)}: add it to the accounts file before closing"
            )
        closed_at = now.isoformat(timespec="seconds")
        for institution in wanted:
            parts = compute(cur, ledger, institution, first)
            application = Application(
                application_id=f"CA{first.replace('-', '')}{institution}{secrets.token_hex(3).upper()}",
                institution=institution, month=first, state="applied", closed_at=closed_at, **parts,
            )  # fmt: skip
            cur.execute(
                ledger.sql("INSERT INTO month_closes VALUES (?, ?, ?, 'applied', ?, ?, ?)"),
                (
                    application.application_id, institution, first, closed_at, closed_at,
                    application.summary_json(),
                ),
            )  # fmt: skip
            out.append(application)
    return out


def applications(
    ledger: Ledger, month: str, states: Sequence[str] = ("applied", "paid")
) -> list[Application]:
    month_bounds(month)
    marks = ", ".join("?" * len(states))
    rows = ledger.query(
        f"SELECT application_id, state, summary FROM month_closes WHERE month = ? AND state IN ({marks})"
        f" ORDER BY institution LIMIT {CLOSES_LISTED_MAX}",
        [month, *states],
    )
    return [application_from(r) for r in rows]


def change_state(ledger: Ledger, application_id: str, to: str, now: datetime) -> Application:
    """undone (3204) from applied only; paid from applied only."""
    with ledger.transaction() as cur:
        cur.execute(
            ledger.sql("SELECT application_id, state, summary FROM month_closes WHERE application_id = ?"),
            (application_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise MonthEndError(f"no clearing application {application_id}")
        if str(row[1]) != "applied":
            what = "undone" if to == "undone" else "marked paid"
            raise MonthEndError(f"{application_id} is {row[1]}: only an unpaid application can be {what}")
        cur.execute(
            ledger.sql("UPDATE month_closes SET state = ?, changed_at = ? WHERE application_id = ?"),
            (to, now.isoformat(timespec="seconds"), application_id),
        )
    found = application_from(row)
    return Application(**{**asdict_shallow(found), "state": to})


def asdict_shallow(a: Application) -> dict[str, Any]:
    return {f: getattr(a, f) for f in a.__dataclass_fields__}


# ---------------------------------------------------------------- payment files

PAYMENT_COLUMNS = (
    "application_id", "month", "paying_agency", "institution", "bank_name", "account_name", "account_no",
    "settlements", "fund_fen", "account_fen", "amount_fen", "amount_yuan",
)  # fmt: skip


def payment_files(applications: Sequence[Application], accounts: Mapping[str, BankAccount]) -> dict[str, str]:
    """One CSV per paying agency (file name: its party, / replaced): a row per institution it pays, and
    a TOTAL row; amounts in fen and in yuan with two decimals, computed from fen."""
    rows: dict[str, list[list[str]]] = {}
    totals: dict[str, Line] = {}
    for a in applications:
        account = accounts.get(a.institution)
        if account is None:
            raise MonthEndError(f"no bank account for {a.institution}")
        for party, line in a.by_paying_party.items():
            rows.setdefault(party, []).append(
                [
                    a.application_id, a.month, party, a.institution, account.bank_name, account.account_name,
                    account.account_no, str(line.settlements), str(line.fund_fen), str(line.account_fen),
                    str(line.payable_fen), yuan(line.payable_fen),
                ]
            )  # fmt: skip
            totals[party] = plus(totals.get(party, Line(0, 0, 0, 0, 0)), line)
    out = {}
    for party, party_rows in sorted(rows.items()):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(PAYMENT_COLUMNS)
        writer.writerows(party_rows)
        t = totals[party]
        writer.writerow(
            [
                "TOTAL", party_rows[0][1], party, "", "", "", "", str(t.settlements), str(t.fund_fen),
                str(t.account_fen), str(t.payable_fen), yuan(t.payable_fen),
            ]
        )  # fmt: skip
        out[party.replace("/", "-")] = buffer.getvalue()
    return out


def plus(a: Line, b: Line) -> Line:
    return Line(
        a.settlements + b.settlements, a.total_fen + b.total_fen, a.fund_fen + b.fund_fen,
        a.account_fen + b.account_fen, a.cash_fen + b.cash_fen,
    )  # fmt: skip


def write_month_files(
    folder: Path, applications: Sequence[Application], accounts: Mapping[str, BankAccount]
) -> list[Path]:
    """The 3203 applications (one JSON each) and the payment files of a month, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for a in applications:
        path = folder / f"3203-{a.application_id}.json"
        path.write_text(json.dumps(a.national(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    month = applications[0].month if applications else ""
    for party, text in payment_files(applications, accounts).items():
        path = folder / f"payment-{month}-{party}.csv"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
