"""The double-entry ledger on SQLite (default: a file in the data folder) or PostgreSQL (psycopg 3),
from one schema. Append-only: a reversal is a compensating entry; a settlement id is booked at most
once per kind (the primary key), so re-posting a delivered entry is a no-op."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.ledger.partitions import (
    MONTHS_AHEAD,
    ensure_month,
    month_after,
    months_from,
    months_without_partitions,
)
from adapters.ledger.schema import MIGRATIONS
from adapters.settlement_records import (
    LedgerRecord,
    ledger_record_from,
    ledger_record_json,
    replayed,
    settlement_from,
)
from adapters.settlement_store import StoredSettlement
from gateway.engine.routing import Journal, Transfer

JOURNAL_COLUMNS = (
    "entry_id",
    "settlement_id",
    "kind",
    "cause",
    "message_id",
    "at",
    "month",
    "institution",
    "inst_region",
    "inst_district",
    "insured_region",
    "insured_district",
    "paying_party",
    "scheme",
    "visit",
    "total_fen",
    "fund_total_fen",
    "account_fen",
    "cash_fen",
    "stream_id",
    "booked_at",
    "origin_month",
    "at_month",
)


FUNDS_COLUMNS = "entry_id, fund_code, amount_fen, at_month, inst_region"
TRANSFER_COLUMNS = "entry_id, seq, debit, credit, amount_fen, at_month, inst_region"
RECORD_COLUMNS = "entry_id, settlement_id, person_id, plan, version, balance_fen, body, at_month, inst_region"


PARAMETERS_MAX = 30_000  # per statement: SQLite allows 32,766, PostgreSQL 65,535


def chunked(rows: list[tuple[Any, ...]], width: int) -> Iterator[list[tuple[Any, ...]]]:
    step = max(1, PARAMETERS_MAX // width)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def marks(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


def journal_row(entry: Entry, closed: set[tuple[str, str]], booked_at: str) -> tuple[Any, ...]:
    """The journal row of an entry, in JOURNAL_COLUMNS order, booked in the first month from its own that
    its institution has not closed."""
    j = entry.journal
    month = origin = j.at[:7]
    while (j.institution, month) in closed:
        month = next_month(month)
    return (
        j.key, j.settlement_id, j.kind, j.cause, j.message_id, j.at, month, j.institution, j.inst_region,
        j.inst_district, j.insured_region, j.insured_district, j.paying_party, j.scheme, j.visit,
        j.total_fen, j.fund_total_fen, j.account_fen, j.cash_fen, entry.stream_id, booked_at,
        origin if month != origin else "", origin,
    )  # fmt: skip


next_month = month_after  # "2026-12" -> "2027-01": the month a closed month's late entries go to


class LedgerUnavailable(Exception):
    """The database cannot be reached or refused the transaction for an operational reason: retry."""


@dataclass(frozen=True, slots=True)
class Record:
    """What the commit behind an entry wrote in Redis (adapters/settlement_records.LedgerRecord), as the
    JSON it travelled in and parsed."""

    text: str
    parsed: LedgerRecord


@dataclass(frozen=True, slots=True)
class Entry:
    journal: Journal
    transfers: list[Transfer]
    stream_id: str
    record: Record | None = None  # None: an entry of the first formats, committed without one


class UnbalancedEntry(ValueError):
    pass


SOURCES = ("fund:", "personal:")


def check_entry(entry: Entry) -> None:
    """The code-level half of the balance check (the database's CHECKs are the other): what leaves the
    funds and the personal account, net, is exactly the journal's fund total plus account payment
    (negative for a reversal or a refund: money moves back into them)."""
    j = entry.journal
    if any(t.amount_fen <= 0 or t.debit == t.credit for t in entry.transfers):
        raise UnbalancedEntry(f"{j.key}: a transfer that is not positive or not between two accounts")
    moved = sum(t.amount_fen for t in entry.transfers if t.debit.startswith(SOURCES)) - sum(
        t.amount_fen for t in entry.transfers if t.credit.startswith(SOURCES)
    )
    if moved != j.fund_total_fen + j.account_fen:
        raise UnbalancedEntry(f"{j.key}: transfers move {moved}, the journal says funds + account")
    if (
        j.fund_total_fen + j.account_fen + j.cash_fen != j.total_fen
        or sum(j.funds.values()) != j.fund_total_fen
    ):
        raise UnbalancedEntry(f"{j.key}: the journal does not add up")


class Ledger:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.postgres = dsn.startswith(("postgresql://", "postgres://"))
        self._conn: Any = None

    # ---------------------------------------------------------------- connection

    def connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        try:
            if self.postgres:
                import psycopg

                self._conn = psycopg.connect(self.dsn, connect_timeout=3, autocommit=False)
            else:
                path = self.dsn.removeprefix("sqlite:///")
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.execute("PRAGMA synchronous=FULL")
        except Exception as exc:
            self._conn = None
            raise LedgerUnavailable(str(exc)) from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def sql(self, text: str) -> str:
        """Queries are written with ? placeholders; psycopg wants %s (and a literal % doubled)."""
        return text.replace("%", "%%").replace("?", "%s") if self.postgres else text

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            if not self.postgres:
                cur.execute("BEGIN IMMEDIATE")
            yield cur
            conn.commit() if self.postgres else cur.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.rollback() if self.postgres else conn.execute("ROLLBACK")
            except Exception:
                self.close()  # the connection is gone: reconnect next time
            if self.operational(exc):
                self.close()
                raise LedgerUnavailable(str(exc)) from exc
            raise

    def operational(self, exc: BaseException) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            return True
        if self.postgres:
            import psycopg

            return isinstance(exc, psycopg.OperationalError)
        return False

    def migrate(self, up_to: int | None = None) -> int:
        """The migrations above the applied version, in one transaction (up_to: tests build a ledger of
        an earlier version to migrate with data in it)."""
        with self.transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            current = int(cur.fetchone()[0])
            for version, step in MIGRATIONS:
                if version > current and (up_to is None or version <= up_to):
                    if not isinstance(step, str):
                        if self.postgres:
                            step(cur)
                    else:
                        for statement in (s.strip() for s in step.split(";")):
                            if statement:
                                cur.execute(statement)
                    cur.execute(self.sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
                    current = version
        return current

    def ensure_partitions(self, month: str, regions: Iterable[str] = ()) -> list[tuple[str, str]]:
        """PostgreSQL: partitions for this month and the months ahead, with one for each of `regions`
        (and every region that has one already); the (month, region) partitions created. SQLite: none."""
        if not self.postgres:
            return []
        regions = list(regions)
        created: list[tuple[str, str]] = []
        for m in months_from(month, MONTHS_AHEAD):  # a transaction each
            with self.transaction() as cur:
                created += ensure_month(cur, m, regions)
        return created

    def months_without_partitions(self, month: str) -> int:
        """PostgreSQL: of this month and the two ahead, how many have no partitions. SQLite: 0."""
        if not self.postgres:
            return 0
        with self.transaction() as cur:
            return months_without_partitions(cur, month)

    # ---------------------------------------------------------------- booking

    def book(self, entries: Sequence[Entry]) -> list[Journal]:
        """Books the entries in one transaction; entries already booked are skipped. Returns the journals
        that were new. An entry of a month its institution has closed goes to the next open month.
        A multi-row INSERT per table, not a statement per row: on a partitioned PostgreSQL ledger each
        statement sets up its routing to the partitions, which row by row cost a third of the rate."""
        booked_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self.transaction() as cur:
            if self.postgres:  # waits for a close-month in progress (it locks journal EXCLUSIVE)
                # ONLY: the partitioned parent, not every month's partitions (a lock each)
                cur.execute("LOCK TABLE ONLY journal IN ROW EXCLUSIVE MODE")
            closed = self.closed_months(cur, {(e.journal.institution, e.journal.at[:7]) for e in entries})
            rows = []
            for entry in entries:
                check_entry(entry)
                rows.append(journal_row(entry, closed, booked_at))
            inserted: set[str] = set()
            for chunk in chunked(rows, len(JOURNAL_COLUMNS)):
                cur.execute(
                    self.sql(
                        f"INSERT INTO journal ({', '.join(JOURNAL_COLUMNS)})"
                        f" VALUES {marks(len(chunk), len(JOURNAL_COLUMNS))}"
                        " ON CONFLICT DO NOTHING RETURNING entry_id"
                    ),
                    [v for row in chunk for v in row],
                )
                inserted |= {str(r[0]) for r in cur.fetchall()}
            new: list[Entry] = []
            for entry in entries:  # delivered again (booked already, or twice in the batch): nothing to do
                if entry.journal.key in inserted:
                    inserted.discard(entry.journal.key)
                    new.append(entry)
            funds, transfers, records = [], [], []
            for entry in new:
                j = entry.journal
                part = (j.at[:7], j.inst_region)  # the journal row's partition: adapters/ledger/partitions.py
                funds += [(j.key, code, amount, *part) for code, amount in sorted(j.funds.items())]
                transfers += [
                    (j.key, i, t.debit, t.credit, t.amount_fen, *part) for i, t in enumerate(entry.transfers)
                ]
                if entry.record is not None:
                    r = entry.record.parsed
                    records.append(
                        (j.key, j.settlement_id, r.person_id, r.plan, r.version, r.balance_fen,
                         entry.record.text, *part)
                    )  # fmt: skip
            self.insert_rows(cur, "journal_funds", FUNDS_COLUMNS, funds)
            self.insert_rows(cur, "transfers", TRANSFER_COLUMNS, transfers)
            self.insert_rows(cur, "records", RECORD_COLUMNS, records)
        return [e.journal for e in new]

    def insert_rows(self, cur: Any, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
        width = columns.count(",") + 1
        for chunk in chunked(rows, width):
            cur.execute(
                self.sql(f"INSERT INTO {table} ({columns}) VALUES {marks(len(chunk), width)}"),
                [v for row in chunk for v in row],
            )

    def closed_months(self, cur: Any, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (institution, month) are closed, of these and of the months after them (a late entry
        may skip several closed months)."""
        institutions = sorted({inst for inst, _ in pairs})
        if not institutions:
            return set()
        first = min(month for _, month in pairs)
        marks = ", ".join("?" * len(institutions))
        cur.execute(
            self.sql(
                "SELECT institution, month FROM month_closes WHERE state <> 'undone'"
                f" AND month >= ? AND institution IN ({marks})"
            ),
            [first, *institutions],
        )
        return {(str(i), str(m)) for i, m in cur.fetchall()}

    def settled(self, settlement_ids: Iterable[str]) -> set[str]:
        """Which of these settlements have their settle entry booked (a correction waits for it)."""
        ids = sorted(set(settlement_ids))
        if not ids:
            return set()
        marks = ", ".join("?" * len(ids))
        rows = self.query(
            f"SELECT settlement_id FROM journal WHERE kind = 'settle' AND settlement_id IN ({marks})", ids
        )
        return {str(r[0]) for r in rows}

    def original(self, settlement_id: str) -> tuple[Journal, list[Transfer]] | None:
        """The booked settle entry of a settlement, to mirror for a reversal event of the first format."""
        with self.transaction() as cur:
            cur.execute(
                self.sql(f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM journal WHERE entry_id = ?"),
                (settlement_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            r = dict(zip(JOURNAL_COLUMNS, row, strict=True))
            cur.execute(
                self.sql("SELECT fund_code, amount_fen FROM journal_funds WHERE entry_id = ?"),
                (settlement_id,),
            )
            funds = {code: int(amount) for code, amount in cur.fetchall()}
            cur.execute(
                self.sql("SELECT debit, credit, amount_fen FROM transfers WHERE entry_id = ? ORDER BY seq"),
                (settlement_id,),
            )
            transfers = [Transfer(d, c, int(a)) for d, c, a in cur.fetchall()]
        journal = Journal(
            settlement_id=r["settlement_id"],
            kind="settle",
            message_id=r["message_id"],
            at=r["at"],
            institution=r["institution"],
            inst_region=r["inst_region"],
            inst_district=r["inst_district"],
            insured_region=r["insured_region"],
            insured_district=r["insured_district"],
            paying_party=r["paying_party"],
            scheme=r["scheme"],
            visit=r["visit"],
            total_fen=int(r["total_fen"]),
            fund_total_fen=int(r["fund_total_fen"]),
            account_fen=int(r["account_fen"]),
            cash_fen=int(r["cash_fen"]),
            funds=funds,
            entry_id=r["entry_id"],
        )
        return journal, transfers

    def booked_entries(self, entry_ids: Iterable[str]) -> set[str]:
        """Which of these entries are in the ledger already."""
        rows = self.query_ids(
            "SELECT entry_id FROM journal WHERE entry_id IN ({marks})", sorted(set(entry_ids))
        )
        return {str(r[0]) for r in rows}

    # ---------------------------------------------------------------- the archive: what left Redis

    def schema_version(self) -> int:
        """The migrations applied (0: none yet; the posting worker applies them when it starts)."""
        with self.transaction() as cur:
            if self.postgres:
                cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
            else:
                cur.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_version'")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            return int(cur.fetchone()[0])

    def records_of(self, settlement_id: str) -> list[tuple[str, str, LedgerRecord]]:
        """A settlement's commit records in commit order: (entry id, kind, record)."""
        rows = self.query(
            "SELECT r.entry_id, j.kind, r.body FROM records r JOIN journal j ON j.entry_id = r.entry_id"
            " WHERE r.settlement_id = ? ORDER BY r.version, r.entry_id",
            [settlement_id],
        )
        return [(str(e), str(k), ledger_record_from(b)) for e, k, b in rows]

    def archived(self, settlement_ids: list[str]) -> set[str]:
        """Which of these settlements the ledger holds the settle record of (retention may remove them)."""
        return {
            str(r[0])
            for r in self.query_ids(
                "SELECT entry_id FROM records WHERE entry_id IN ({marks})", settlement_ids
            )
        }

    def archive_from_store(self, records: list[tuple[str, LedgerRecord]]) -> None:
        """Records of settlements booked before the ledger kept them, written from what Redis holds,
        under their settle entries (version 0: before anything the person committed since)."""
        if not records:
            return
        with self.transaction() as cur:
            cur.executemany(  # the settle entry's month and region: the partition its row lives in
                self.sql(
                    f"INSERT INTO records ({RECORD_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, j.at_month,"
                    " j.inst_region FROM journal j WHERE j.entry_id = ? ON CONFLICT DO NOTHING"
                ),
                [
                    (sid, sid, r.person_id, r.plan, r.version, r.balance_fen, ledger_record_json(r), sid)
                    for sid, r in records
                ],
            )

    def archived_settlements(self, settlement_ids: list[str]) -> dict[str, StoredSettlement]:
        """The settlements as their records replay, for those of these ids the ledger keeps records of."""
        bodies: dict[str, list[LedgerRecord]] = {}
        for sid, body in self.query_ids(
            "SELECT settlement_id, body FROM records WHERE settlement_id IN ({marks})"
            " ORDER BY settlement_id, version, entry_id",
            settlement_ids,
        ):
            bodies.setdefault(str(sid), []).append(ledger_record_from(body))
        out = {}
        for sid, records in bodies.items():
            fields = replayed(records)
            if b"resp" in fields:
                out[sid] = settlement_from(sid, fields)
        return out

    def last_entry_at(self, settlement_ids: list[str]) -> dict[str, str]:
        """When each of these settlements last changed: its latest entry's `at` (ISO, the gateway's
        offset), for those the ledger has."""
        rows = self.query_ids(
            "SELECT settlement_id, MAX(at) FROM journal WHERE settlement_id IN ({marks})"
            " GROUP BY settlement_id",
            settlement_ids,
        )
        return {str(sid): str(at) for sid, at in rows}

    def by_message(self, institution: str, message_id: str) -> list[tuple[str, str]]:
        """The entries an institution's message id made: (settlement id, kind)."""
        rows = self.query(
            "SELECT settlement_id, kind FROM journal WHERE institution = ? AND message_id = ?"
            " ORDER BY entry_id",
            [institution, message_id],
        )
        return [(str(s), str(k)) for s, k in rows]

    def person_records(
        self, after: str = "", persons_max: int = 500
    ) -> list[tuple[str, list[tuple[str, str, LedgerRecord]]]]:
        """The commit records of up to persons_max persons whose ids sort after `after`, each person's in
        commit order as (settlement id, time of the entry, record): rebuild reads the whole ledger this
        way, a page of persons at a time."""
        ids = [
            str(r[0])
            for r in self.query(
                "SELECT DISTINCT person_id FROM records WHERE person_id > ? ORDER BY person_id LIMIT ?",
                [after, persons_max],
            )
        ]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        out: dict[str, list[tuple[str, str, LedgerRecord]]] = {pid: [] for pid in ids}
        for pid, sid, at, body in self.query(
            "SELECT r.person_id, r.settlement_id, j.at, r.body FROM records r JOIN journal j"
            f" ON j.entry_id = r.entry_id WHERE r.person_id IN ({marks})"
            " ORDER BY r.person_id, r.version, r.entry_id",
            ids,
        ):
            out[str(pid)].append((str(sid), str(at), ledger_record_from(body)))
        return list(out.items())

    def net_by_settlement(self) -> dict[str, tuple[int, dict[str, int], int, int]]:
        """Every settlement's entries summed: (total, funds by code, account, cash)."""
        out: dict[str, tuple[int, dict[str, int], int, int]] = {}
        for sid, total, account, cash in self.query(
            "SELECT settlement_id, SUM(total_fen), SUM(account_fen), SUM(cash_fen) FROM journal"
            " GROUP BY settlement_id"
        ):
            out[str(sid)] = (int(total), {}, int(account), int(cash))
        for sid, code, amount in self.query(
            "SELECT j.settlement_id, f.fund_code, SUM(f.amount_fen) FROM journal_funds f"
            " JOIN journal j ON j.entry_id = f.entry_id GROUP BY j.settlement_id, f.fund_code"
        ):
            if int(amount):
                out[str(sid)][1][str(code)] = int(amount)
        return out

    def query_ids(self, text: str, ids: Sequence[str], chunk_max: int = 500) -> Iterator[tuple[Any, ...]]:
        """The rows of `text`, whose `{marks}` is the placeholders of an IN list, for `ids` chunk_max at
        a time (a statement's parameters are bounded)."""
        for start in range(0, len(ids), chunk_max):
            chunk = list(ids[start : start + chunk_max])
            yield from self.query(text.format(marks=", ".join("?" * len(chunk))), chunk)

    def query(self, text: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self.transaction() as cur:
            cur.execute(self.sql(text), tuple(params))
            return [tuple(row) for row in cur.fetchall()]
