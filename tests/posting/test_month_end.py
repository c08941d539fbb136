"""Month end on real ledgers: a month closes into clearing applications (3203) whose payment files add up
to the statements and to the ledger's own transfers, to the fen; a closed month takes no more entries
(late ones go to the next month, marked); an unpaid application can be undone (3204) and the month
closed again; every refusal says why. Then the command end to end (GetClearing over mTLS:
tests/security/test_clearing.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from adapters.ledger.store import Ledger
from gateway.codec import Envelope, PersonRef
from gateway.posting import month_end as me
from gateway.posting.statements import institution_statements
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.server import Gateway

from ..conftest import NOW
from .test_worker import BILL, add_persons, run_until_caught_up

pytestmark = pytest.mark.asyncio
ZONE = ZoneInfo("Asia/Shanghai")
ACCOUNTS = me.load_accounts(Path(__file__).resolve().parents[2] / "citydata" / "institution-accounts.csv")
JULY = datetime(2026, 7, 1, tzinfo=ZONE)
AFTER = datetime(2026, 7, 2, 9, 0, tzinfo=ZONE)
INSTITUTIONS = ("H50010300001", "H50010600001")


async def settle(gw: Gateway, n: int, reverse: frozenset[int] = frozenset(), prefix: str = "ME") -> list[str]:
    assert gw.service is not None and gw.corrections is not None
    from gateway.correction_service import Target

    sids = []
    for i in range(n):
        env = Envelope(INSTITUTIONS[i % 2], "T", "op", f"{prefix}{i:06d}")
        done = await gw.service.settle(env, PersonRef(f"L{i % 40:08d}", None), BILL, f"h{i}")
        sids.append(done.settlement_id)
        if i in reverse:
            renv = Envelope(env.institution_code, "T", "op", f"{prefix}R{i:06d}")
            await gw.corrections.reverse(renv, Target(done.settlement_id, "", None), f"r{i}")
    return sids


def payable_in_ledger(ledger: Ledger, institution: str, month: str) -> int:
    """What the agencies owe the institution for the month, from the transfers alone."""
    rows = ledger.query(
        "SELECT SUM(CASE WHEN t.credit LIKE ? THEN t.amount_fen ELSE -t.amount_fen END) FROM transfers t"
        " JOIN journal j ON j.entry_id = t.entry_id"
        " WHERE j.month = ? AND (t.credit LIKE ? OR t.debit LIKE ?)",
        [f"payable:%:{institution}", month, f"payable:%:{institution}", f"payable:%:{institution}"],
    )
    return int(rows[0][0] or 0)


async def booked(gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, n: int) -> None:
    await add_persons(gateway)
    await settle(gateway, n, reverse=frozenset({3, 8}))
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)


async def test_a_closed_months_payment_files_add_up_to_its_statements_and_transfers(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, tmp_path: Path
) -> None:
    await booked(gateway, sync_redis, ledger, 20)
    done = me.close_month(ledger, "2026-06", None, JULY, AFTER, ACCOUNTS)
    assert sorted(a.institution for a in done) == sorted(INSTITUTIONS)
    statements = {s.institution: s for s in institution_statements(ledger, "2026-06")}
    for a in done:
        s = statements[a.institution]
        t = a.totals
        assert (t.settlements, t.total_fen, t.fund_fen, t.account_fen, t.cash_fen) == (
            s.settlements, s.total_fen, s.fund_total_fen, s.account_fen, s.cash_fen,
        )  # fmt: skip
        assert t.payable_fen == payable_in_ledger(ledger, a.institution, "2026-06") > 0
        assert dict(a.funds) == s.funds
        assert t.settlements == 9  # ten each, one of them reversed
    files = me.write_month_files(tmp_path, me.applications(ledger, "2026-06"), ACCOUNTS)
    payments = [p for p in files if p.name.startswith("payment-")]
    assert payments
    paid_total = 0
    for path in payments:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        *institutions, total = rows
        assert total["application_id"] == "TOTAL"
        assert sum(int(r["amount_fen"]) for r in institutions) == int(total["amount_fen"])
        for r in institutions:
            assert r["account_no"] == ACCOUNTS[r["institution"]].account_no
            whole, cents = divmod(int(r["amount_fen"]), 100)
            assert r["amount_yuan"] == f"{whole}.{cents:02d}"
        paid_total += int(total["amount_fen"])
    assert paid_total == sum(payable_in_ledger(ledger, i, "2026-06") for i in INSTITUTIONS)
    application = json.loads(next(p for p in files if p.name.startswith("3203-")).read_text(encoding="utf-8"))
    [item] = application["items"]
    assert (item["clr_type"], item["begndate"], item["enddate"]) == ("11", "2026-06-01", "2026-06-30")


async def test_a_closed_month_takes_no_more_entries(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger
) -> None:
    await booked(gateway, sync_redis, ledger, 6)
    [closed] = me.close_month(ledger, "2026-06", ["H50010300001"], JULY, AFTER, ACCOUNTS)
    before = institution_statements(ledger, "2026-06", "H50010300001")
    await settle(
        gateway, 2, prefix="LATE"
    )  # committed in June (the gateway's clock) but booked after the close
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w2", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    assert institution_statements(ledger, "2026-06", "H50010300001") == before
    moved = ledger.query(
        "SELECT month, origin_month FROM journal WHERE institution = ? AND origin_month <> ''",
        ["H50010300001"],
    )
    assert moved == [("2026-07", "2026-06")]
    # the other institution's June was not closed: its late entry stays in June
    assert ledger.query("SELECT COUNT(*) FROM journal WHERE origin_month <> '' AND institution = ?",
                        ["H50010600001"]) == [(0,)]  # fmt: skip
    # July's application shows it as an adjustment of June
    august = datetime(2026, 8, 1, tzinfo=ZONE)
    [july] = me.close_month(ledger, "2026-07", ["H50010300001"], august, august, ACCOUNTS)
    assert list(july.adjustments) == ["2026-06"] and july.adjustments["2026-06"].settlements == 1
    assert closed.application_id != july.application_id


async def test_every_refusal_says_why_and_changes_nothing(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger
) -> None:
    await booked(gateway, sync_redis, ledger, 4)
    cases = [
        ("2026-06", None, JULY, datetime(2026, 6, 30, 23, 0, tzinfo=ZONE), ACCOUNTS, "is not over"),
        ("2026-06", None, datetime(2026, 6, 30, 23, 59, tzinfo=ZONE), AFTER, ACCOUNTS, "not everything"),
        ("2026-06", None, JULY, AFTER, {}, "no bank account for"),
        ("2026-6", None, JULY, AFTER, ACCOUNTS, "YYYY-MM"),
    ]
    for month, only, watermark, now, accounts, why in cases:
        with pytest.raises(me.MonthEndError, match=why):
            me.close_month(ledger, month, only, watermark, now, accounts)
    assert ledger.query("SELECT COUNT(*) FROM month_closes") == [(0,)]
    [first] = me.close_month(ledger, "2026-06", ["H50010300001"], JULY, AFTER, ACCOUNTS)
    with pytest.raises(me.MonthEndError, match="closed already"):
        me.close_month(ledger, "2026-06", ["H50010300001"], JULY, AFTER, ACCOUNTS)
    me.change_state(ledger, first.application_id, "undone", AFTER)  # 3204: withdrawn while unpaid
    [again] = me.close_month(ledger, "2026-06", ["H50010300001"], JULY, AFTER, ACCOUNTS)
    assert again.totals == first.totals and again.application_id != first.application_id
    me.change_state(ledger, again.application_id, "paid", AFTER)
    with pytest.raises(me.MonthEndError, match="only an unpaid application"):
        me.change_state(ledger, again.application_id, "undone", AFTER)
    with pytest.raises(me.MonthEndError, match="no clearing application"):
        me.change_state(ledger, "CA-nonesuch", "undone", AFTER)
    assert [a.state for a in me.applications(ledger, "2026-06")] == ["paid"]


async def test_the_command_closes_writes_files_and_audits_each_action(
    gateway: Gateway,
    sync_redis: redis.Redis,
    ledger: Ledger,
    ledger_dsn: str,
    tmp_path: Path,
    redis_server: object,
) -> None:
    await booked(gateway, sync_redis, ledger, 6)
    audit = tmp_path / "audit.log"
    base = [
        sys.executable, "-m", "gateway.cli", "close-month", "--ledger", ledger_dsn,
        "--redis", redis_server.url, "--audit-log", str(audit), "--operator", "finance-1",
    ]  # fmt: skip
    # the command's clock is the real one (2026-12 here and later): June is long over, the streams empty
    run = subprocess.run([*base, "--month", "2026-06", "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "payable" in run.stdout and len(list((tmp_path / "out").glob("payment-2026-06-*.csv"))) >= 1
    application_id = run.stdout.split()[0]
    again = subprocess.run([*base, "--month", "2026-06"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to close" in again.stdout
    undo = subprocess.run([*base, "--undo", application_id], capture_output=True, text=True, timeout=120)
    assert undo.returncode == 0 and "undone" in undo.stdout
    twice = subprocess.run([*base, "--undo", application_id], capture_output=True, text=True, timeout=120)
    assert twice.returncode == 1 and "only an unpaid application" in twice.stderr
    events = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events if e["event"].startswith(("month", "clearing"))][:3] == [
        "month_closed", "month_closed", "clearing_undone",
    ]  # fmt: skip
    assert all(e["operator"].startswith("finance-1@") for e in events)


assert NOW.month == 6  # the gateway fixture's clock: June 2026, the month these tests close
