"""The ledger schema, one text for SQLite and PostgreSQL, applied by numbered migrations. Money is
BIGINT fen. Transfers carry one debit and one credit account each, so every entry balances by
construction, and the database refuses a transfer that is not positive or not between two accounts.

A migration is SQL text both databases run, or a function of a cursor that only PostgreSQL runs (SQLite
records the version and changes nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.ledger.partitions import partition_ledger

Migration = str | Callable[[Any], None]


def child_columns(table: str) -> str:
    """Migration 4 for a table that hangs off the journal: its entry's month and region, for the
    partitioning that follows (their foreign key must name the journal's whole partitioned key)."""
    own = f"(SELECT j.{{0}} FROM journal j WHERE j.entry_id = {table}.entry_id)"
    return f"""
        ALTER TABLE {table} ADD COLUMN at_month TEXT NOT NULL DEFAULT '';
        ALTER TABLE {table} ADD COLUMN inst_region TEXT NOT NULL DEFAULT '';
        UPDATE {table} SET at_month = {own.format("at_month")}, inst_region = {own.format("inst_region")};
        """


MIGRATIONS: list[tuple[int, Migration]] = [
    (
        1,
        """
        CREATE TABLE journal (
            settlement_id    TEXT   NOT NULL,
            kind             TEXT   NOT NULL CHECK (kind IN ('settle', 'reverse')),
            message_id       TEXT   NOT NULL,
            at               TEXT   NOT NULL,
            month            TEXT   NOT NULL,
            institution      TEXT   NOT NULL,
            inst_region      TEXT   NOT NULL,
            inst_district    TEXT   NOT NULL,
            insured_region   TEXT   NOT NULL,
            insured_district TEXT   NOT NULL,
            paying_party     TEXT   NOT NULL,
            scheme           TEXT   NOT NULL,
            visit            TEXT   NOT NULL,
            total_fen        BIGINT NOT NULL,
            fund_total_fen   BIGINT NOT NULL,
            account_fen      BIGINT NOT NULL,
            cash_fen         BIGINT NOT NULL,
            stream_id        TEXT   NOT NULL,
            booked_at        TEXT   NOT NULL,
            PRIMARY KEY (settlement_id, kind),
            CHECK (fund_total_fen + account_fen + cash_fen = total_fen)
        );
        CREATE INDEX journal_institution_month ON journal (institution, month);
        CREATE INDEX journal_message ON journal (institution, message_id);
        CREATE TABLE journal_funds (
            settlement_id TEXT   NOT NULL,
            kind          TEXT   NOT NULL,
            fund_code     TEXT   NOT NULL,
            amount_fen    BIGINT NOT NULL,
            PRIMARY KEY (settlement_id, kind, fund_code),
            FOREIGN KEY (settlement_id, kind) REFERENCES journal (settlement_id, kind)
        );
        CREATE TABLE transfers (
            settlement_id TEXT    NOT NULL,
            kind          TEXT    NOT NULL,
            seq           INTEGER NOT NULL,
            debit         TEXT    NOT NULL,
            credit        TEXT    NOT NULL,
            amount_fen    BIGINT  NOT NULL CHECK (amount_fen > 0),
            PRIMARY KEY (settlement_id, kind, seq),
            FOREIGN KEY (settlement_id, kind) REFERENCES journal (settlement_id, kind),
            CHECK (debit <> credit)
        );
        CREATE INDEX transfers_debit ON transfers (debit);
        CREATE INDEX transfers_credit ON transfers (credit);
        """,
    ),
    (
        2,
        # Corrections: a settlement may have refunds and adjustments beside its settle and reverse
        # entries, so every entry gets an id of its own (the settlement id for its settle entry, R... for
        # a reversal, F... for a refund, A... for an adjustment); a settlement is still settled at most
        # once and reversed at most once.
        """
        CREATE TABLE journal2 (
            entry_id         TEXT   NOT NULL PRIMARY KEY,
            settlement_id    TEXT   NOT NULL,
            kind             TEXT   NOT NULL CHECK (kind IN ('settle', 'reverse', 'refund', 'adjust')),
            cause            TEXT   NOT NULL DEFAULT '',
            message_id       TEXT   NOT NULL,
            at               TEXT   NOT NULL,
            month            TEXT   NOT NULL,
            institution      TEXT   NOT NULL,
            inst_region      TEXT   NOT NULL,
            inst_district    TEXT   NOT NULL,
            insured_region   TEXT   NOT NULL,
            insured_district TEXT   NOT NULL,
            paying_party     TEXT   NOT NULL,
            scheme           TEXT   NOT NULL,
            visit            TEXT   NOT NULL,
            total_fen        BIGINT NOT NULL,
            fund_total_fen   BIGINT NOT NULL,
            account_fen      BIGINT NOT NULL,
            cash_fen         BIGINT NOT NULL,
            stream_id        TEXT   NOT NULL,
            booked_at        TEXT   NOT NULL,
            CHECK (fund_total_fen + account_fen + cash_fen = total_fen)
        );
        INSERT INTO journal2 SELECT
            CASE kind WHEN 'settle' THEN settlement_id ELSE 'R' || substr(settlement_id, 2) END,
            settlement_id, kind, '', message_id, at, month, institution, inst_region, inst_district,
            insured_region, insured_district, paying_party, scheme, visit, total_fen, fund_total_fen,
            account_fen, cash_fen, stream_id, booked_at
            FROM journal;
        CREATE TABLE journal_funds2 (
            entry_id   TEXT   NOT NULL REFERENCES journal2 (entry_id),
            fund_code  TEXT   NOT NULL,
            amount_fen BIGINT NOT NULL,
            PRIMARY KEY (entry_id, fund_code)
        );
        INSERT INTO journal_funds2 SELECT
            CASE kind WHEN 'settle' THEN settlement_id ELSE 'R' || substr(settlement_id, 2) END,
            fund_code, amount_fen FROM journal_funds;
        CREATE TABLE transfers2 (
            entry_id   TEXT    NOT NULL REFERENCES journal2 (entry_id),
            seq        INTEGER NOT NULL,
            debit      TEXT    NOT NULL,
            credit     TEXT    NOT NULL,
            amount_fen BIGINT  NOT NULL CHECK (amount_fen > 0),
            PRIMARY KEY (entry_id, seq),
            CHECK (debit <> credit)
        );
        INSERT INTO transfers2 SELECT
            CASE kind WHEN 'settle' THEN settlement_id ELSE 'R' || substr(settlement_id, 2) END,
            seq, debit, credit, amount_fen FROM transfers;
        DROP TABLE transfers;
        DROP TABLE journal_funds;
        DROP TABLE journal;
        ALTER TABLE journal2 RENAME TO journal;
        ALTER TABLE journal_funds2 RENAME TO journal_funds;
        ALTER TABLE transfers2 RENAME TO transfers;
        CREATE UNIQUE INDEX journal_settled_once ON journal (settlement_id, kind)
            WHERE kind IN ('settle', 'reverse');
        CREATE INDEX journal_settlement ON journal (settlement_id);
        CREATE INDEX journal_institution_month2 ON journal (institution, month);
        CREATE INDEX journal_message2 ON journal (institution, message_id);
        CREATE INDEX transfers_debit2 ON transfers (debit);
        CREATE INDEX transfers_credit2 ON transfers (credit);
        """,
    ),
    (
        3,
        # Retention: the ledger keeps what each commit wrote in Redis (records), so a settlement that has
        # left Redis is still answered, and Redis can be rebuilt from the ledger. Month end: a closed
        # month of an institution (month_closes, one live close per institution and month) takes no more
        # entries; one that arrives late is booked in the next open month, origin_month saying which
        # month it belongs to.
        """
        CREATE TABLE records (
            entry_id      TEXT   NOT NULL PRIMARY KEY REFERENCES journal (entry_id),
            settlement_id TEXT   NOT NULL,
            person_id     TEXT   NOT NULL,
            plan          TEXT   NOT NULL,
            version       BIGINT NOT NULL,
            balance_fen   BIGINT NOT NULL,
            body          TEXT   NOT NULL
        );
        CREATE INDEX records_settlement ON records (settlement_id);
        CREATE INDEX records_person ON records (person_id, version);
        ALTER TABLE journal ADD COLUMN origin_month TEXT NOT NULL DEFAULT '';
        CREATE TABLE month_closes (
            application_id TEXT NOT NULL PRIMARY KEY,
            institution    TEXT NOT NULL,
            month          TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('applied', 'paid', 'undone')),
            closed_at      TEXT NOT NULL,
            changed_at     TEXT NOT NULL,
            summary        TEXT NOT NULL
        );
        CREATE UNIQUE INDEX month_closed_once ON month_closes (institution, month)
            WHERE state <> 'undone';
        """,
    ),
    (
        4,
        # The entry's own month (from `at`, which never changes), beside the booking month (`month`,
        # which moves on past a closed month), on the journal and the tables that hang off it: the key
        # the ledger is partitioned by on PostgreSQL (migration 5, adapters/ledger/partitions.py).
        """
        ALTER TABLE journal ADD COLUMN at_month TEXT NOT NULL DEFAULT '';
        UPDATE journal SET at_month = substr(at, 1, 7);
        """
        + child_columns("journal_funds")
        + child_columns("transfers")
        + child_columns("records"),
    ),
    (5, partition_ledger),
]
