"""The ledger partitioned by month and region on PostgreSQL (migration 5, adapters/ledger/partitions.py),
and migrations 4 and 5 carrying a ledger that already holds entries, on both databases."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from adapters.ledger.store import JOURNAL_COLUMNS, Entry, Ledger
from adapters.settlement_records import LedgerRecord, ledger_record_json
from gateway.engine.routing import mirror, route
from gateway.posting import month_end as me
from gateway.posting.statements import institution_statements
from gateway.posting.worker import PostingWorker, WorkerConfig
from loadtest.bench_posting import event as bench_event

from .conftest import postgres_database
from .test_month_end import ACCOUNTS, AFTER, JULY
from .test_routing_and_ledger import event
from .test_worker import run_until_caught_up


@pytest.fixture
def pg() -> Iterator[Ledger]:
    for dsn in postgres_database():
        ledger = Ledger(dsn)
        ledger.migrate()
        yield ledger
        ledger.close()


def entry(stream_id: str = "1-0", **changes: Any) -> Entry:
    journal, transfers = route(event(**changes))
    return Entry(journal, transfers, stream_id)


def partition_of(ledger: Ledger, table: str, entry_id: str) -> set[str]:
    """Which partitions hold the entry's rows of `table`."""
    rows = ledger.query(f"SELECT tableoid::regclass::text FROM {table} WHERE entry_id = ?", [entry_id])
    return {str(r[0]) for r in rows}


def test_an_entry_lands_in_its_months_and_regions_partition_and_its_rows_beside_it(pg: Ledger) -> None:
    assert pg.ensure_partitions("2026-06", ["500000"]) == [
        ("2026-06", ""), ("2026-06", "500000"), ("2026-07", ""), ("2026-07", "500000"),
        ("2026-08", ""), ("2026-08", "500000"),
    ]  # fmt: skip
    here = entry(sid="S107-260615-aa")
    elsewhere = entry(sid="S107-260615-bb", msgid="M2", inst="H37010200001", inst_region="370100",
                      inst_district="370102")  # fmt: skip
    old = entry(sid="S107-250115-cc", msgid="M3", at="2025-01-15T10:30:00+08:00")
    assert len(pg.book([here, elsewhere, old])) == 3
    assert partition_of(pg, "journal", "S107-260615-aa") == {"journal_2026_06_r500000"}
    assert partition_of(pg, "journal_funds", "S107-260615-aa") == {"journal_funds_2026_06_r500000"}
    assert partition_of(pg, "transfers", "S107-260615-aa") == {"transfers_2026_06_r500000"}
    assert partition_of(pg, "journal", "S107-260615-bb") == {"journal_2026_06_other"}  # none of its own
    assert partition_of(pg, "journal", "S107-250115-cc") == {"journal_other"}  # a month before partitioning
    # the statements read through the partitions as through one table
    [june] = institution_statements(pg, "2026-06", "H50010300001")
    assert (june.settlements, june.total_fen) == (1, 100_000)


def test_a_redelivered_entry_is_booked_once_after_its_month_closed(ledger: Ledger) -> None:
    # the booking month moves on past a closed month; the partition key (the entry's own month) does not
    first = entry()
    ledger.ensure_partitions("2026-06")
    assert len(ledger.book([first])) == 1
    me.close_month(ledger, "2026-06", ["H50010300001"], JULY, AFTER, ACCOUNTS)
    late = entry(stream_id="2-0", sid="S107-260630-dd", msgid="M4")
    assert [j.settlement_id for j in ledger.book([first, late])] == ["S107-260630-dd"]
    assert ledger.query("SELECT entry_id, month, at_month FROM journal ORDER BY entry_id") == [
        ("S107-260615-aa", "2026-06", "2026-06"),
        ("S107-260630-dd", "2026-07", "2026-06"),
    ]
    if ledger.postgres:
        assert partition_of(ledger, "journal", "S107-260630-dd") == {"journal_2026_06_other"}


def test_a_second_settle_entry_of_one_settlement_in_its_month_is_not_booked(ledger: Ledger) -> None:
    ledger.ensure_partitions("2026-06", ["500000"])
    settle = entry()
    again = dataclasses.replace(settle, journal=dataclasses.replace(settle.journal, entry_id="S107-x"))
    reversal = Entry(
        *mirror(settle.journal, settle.transfers, {"msgid": "R1", "at": "2026-06-20T09:00:00+08:00"}), "3-0"
    )
    twice = Entry(dataclasses.replace(reversal.journal, entry_id="R107-x"), reversal.transfers, "4-0")
    assert [j.kind for j in ledger.book([settle, again, reversal, twice])] == ["settle", "reverse"]
    assert ledger.query(
        "SELECT kind, COUNT(*) FROM journal WHERE settlement_id = ? GROUP BY kind ORDER BY kind",
        ["S107-260615-aa"],
    ) == [("reverse", 1), ("settle", 1)]


def book_at_version_3(ledger: Ledger, e: Entry, record: LedgerRecord) -> None:
    """Rows as a ledger of migrations 1 to 3 held them (what book() wrote before at_month existed)."""
    j = e.journal
    row = (j.key, j.settlement_id, j.kind, j.cause, j.message_id, j.at, j.at[:7], j.institution,
           j.inst_region, j.inst_district, j.insured_region, j.insured_district, j.paying_party, j.scheme,
           j.visit, j.total_fen, j.fund_total_fen, j.account_fen, j.cash_fen, e.stream_id,
           "2026-06-15T03:00:00+00:00", "")  # fmt: skip
    columns = ", ".join(JOURNAL_COLUMNS[:-1])
    with ledger.transaction() as cur:
        cur.execute(ledger.sql(f"INSERT INTO journal ({columns}) VALUES ({', '.join('?' * len(row))})"), row)
        for code, amount in sorted(j.funds.items()):
            cur.execute(ledger.sql("INSERT INTO journal_funds VALUES (?, ?, ?)"), (j.key, code, amount))
        for i, t in enumerate(e.transfers):
            cur.execute(
                ledger.sql("INSERT INTO transfers VALUES (?, ?, ?, ?, ?)"),
                (j.key, i, t.debit, t.credit, t.amount_fen),
            )
        body = ledger_record_json(record)
        cur.execute(
            ledger.sql("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)"),
            (j.key, j.settlement_id, record.person_id, record.plan, record.version, 0, body),
        )


def test_migrating_a_ledger_that_holds_entries_keeps_every_figure(ledger_dsn: str) -> None:
    ledger = Ledger(ledger_dsn)
    assert ledger.migrate(up_to=3) == 3
    june = entry(sid="S107-260615-aa")
    july = entry(sid="S107-260702-ee", msgid="M5", at="2026-07-02T08:00:00+08:00", inst_region="370100",
                 inst="H37010200001", inst_district="370102")  # fmt: skip
    for i, e in enumerate((june, july)):
        fields = {b"pid": b"P1", b"status": b"settled"}
        book_at_version_3(ledger, e, LedgerRecord("P1", "500000:resident", i + 1, 0, fields, ()))
    before = (
        institution_statements(ledger, "2026-06"), institution_statements(ledger, "2026-07"),
        ledger.net_by_settlement(), ledger.records_of("S107-260702-ee"),
    )  # fmt: skip
    assert ledger.migrate() == 5
    after = (
        institution_statements(ledger, "2026-06"), institution_statements(ledger, "2026-07"),
        ledger.net_by_settlement(), ledger.records_of("S107-260702-ee"),
    )  # fmt: skip
    assert after == before
    assert ledger.original("S107-260615-aa") == (june.journal, june.transfers)
    assert ledger.query(
        "SELECT entry_id, at_month, inst_region FROM transfers WHERE seq = 0 ORDER BY entry_id"
    ) == [("S107-260615-aa", "2026-06", "500000"), ("S107-260702-ee", "2026-07", "370100")]
    if ledger.postgres:  # each month and region the ledger held got its partitions
        assert partition_of(ledger, "journal", "S107-260702-ee") == {"journal_2026_07_r370100"}
        assert partition_of(ledger, "records", "S107-260615-aa") == {"records_2026_06_r500000"}
    # a redelivery of a migrated entry is still recognised
    assert ledger.book([june, july]) == []
    ledger.close()


def test_months_ahead_keep_every_region_and_a_new_region_waits_for_next_month(pg: Ledger) -> None:
    pg.ensure_partitions("2026-06", ["500000"])
    newcomer = entry(sid="S107-260610-ff", inst="H37010200001", inst_region="370100", inst_district="370102")
    pg.book([newcomer])  # in June's default: no partition of its own yet
    # June cannot get one now (its rows are in the default): skipped without an error; July and August can
    assert pg.ensure_partitions("2026-06", ["370100"]) == [("2026-07", "370100"), ("2026-08", "370100")]
    assert partition_of(pg, "journal", "S107-260610-ff") == {"journal_2026_06_other"}
    # September, made in July without naming any region, keeps both
    assert pg.ensure_partitions("2026-07") == [("2026-09", ""), ("2026-09", "370100"), ("2026-09", "500000")]
    assert pg.ensure_partitions("2026-07") == []  # nothing twice


def test_the_posting_worker_makes_the_months_partitions_for_the_regions_it_books(
    sync_redis: redis.Redis, pg: Ledger
) -> None:
    worker = PostingWorker(
        sync_redis, pg, WorkerConfig(consumer="w1", retention=None), today=lambda: date(2026, 6, 15)
    )
    worker.prepare()
    worker.partition_when_due()  # at the start: the month and the two ahead, no region yet
    assert pg.query("SELECT to_regclass('journal_2026_08') IS NOT NULL") == [(True,)]
    stream, fields = bench_event(7)  # a settlement of an institution of region 500000, in June
    sync_redis.xadd(stream, fields)  # type: ignore[arg-type]
    run_until_caught_up(worker, sync_redis)
    [(sid,)] = pg.query("SELECT entry_id FROM journal")
    assert partition_of(pg, "journal", str(sid)) == {"journal_2026_06_other"}
    worker.partition_when_due()  # not due yet: nothing
    assert pg.query("SELECT to_regclass('journal_2026_07_r500000') IS NOT NULL") == [(False,)]
    worker._last_partition -= worker.config.partitions_every_s  # six hours later
    worker.partition_when_due()
    assert pg.query("SELECT to_regclass('journal_2026_07_r500000') IS NOT NULL") == [(True,)]


def test_a_worker_that_may_not_create_partitions_books_on_and_the_gauge_says_so(
    sync_redis: redis.Redis, pg: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    role = f"booker_{uuid.uuid4().hex[:8]}"  # may create tables and book, owns none of the ledger's
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}")
    booker = Ledger(pg.dsn.replace("postgres@", f"{role}@"))
    try:
        worker = PostingWorker(
            sync_redis, booker, WorkerConfig(consumer="w1", retention=None), today=lambda: date(2027, 5, 3)
        )
        worker.prepare()
        with caplog.at_level(logging.ERROR, logger="gateway.posting.worker"):
            worker.partition_when_due()
        assert "could not create the ledger's partitions for 2027-05" in caplog.text
        assert "must be owner of table journal" in caplog.text
        assert REGISTRY.get_sample_value("medsettle_ledger_months_without_partitions") == 3
        stream, fields = bench_event(8)
        sync_redis.xadd(stream, fields)  # type: ignore[arg-type]
        run_until_caught_up(worker, sync_redis)  # booking goes on, into the default partition
        assert pg.query("SELECT tableoid::regclass::text FROM journal") == [("journal_other",)]
        pg.ensure_partitions("2027-05")  # the owner makes them: the gauge clears at the next look
        worker._last_partition -= worker.config.partitions_every_s
        worker.partition_when_due()
        assert REGISTRY.get_sample_value("medsettle_ledger_months_without_partitions") == 0
    finally:
        booker.close()
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
