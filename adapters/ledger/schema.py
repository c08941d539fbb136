"""The ledger schema, one text for SQLite and PostgreSQL, applied by numbered migrations. Money is
BIGINT fen. Transfers carry one debit and one credit account each, so every entry balances by
construction, and the database refuses a transfer that is not positive or not between two accounts."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
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
]
