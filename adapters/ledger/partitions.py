"""The ledger partitioned by month and region on PostgreSQL (migration 5; SQLite stays one table each).

The journal and the three tables that hang off it (journal_funds, transfers, records) are each
`PARTITION BY LIST (at_month)`, every month `PARTITION BY LIST (inst_region)`: a partition per region
that asked for one, and a default for the rest. A month (or a region's month) therefore moves, detaches
or drops as a whole, and each month's indexes stay the size of a month.

What the layout has to respect:
- The partition key is the entry's own month, `at_month` (from `at`, which never changes for an entry),
  not the booking month (`month`), which moves on when an institution's month is closed: a redelivered
  entry must land in the partition it was first booked in, or `ON CONFLICT DO NOTHING` (exactly once)
  could not see the first booking. PostgreSQL cannot partition by an expression's generated column, so
  `at_month` is a plain column that book() writes (migration 4).
- Every unique index of a partitioned table includes the partition keys: the primary key is (entry_id,
  at_month, inst_region), and "settled once, reversed once" (settlement_id, kind) is only enforced within
  a month and region. A settlement's settle and reverse entries are each written once by the Redis
  commit, whose message and settlement records are the first line of defence; this index is the second,
  and it still refuses a second settle entry of the same settlement in its month.
- Foreign keys to a partitioned table must name its whole key, so the child tables carry at_month and
  inst_region too, and their rows live in the same month and region partitions as their journal row.
- Months are created ahead (ensure_month, a transaction each through Ledger.ensure_partitions, by the
  posting worker at its start and every few hours).
  An entry of a month that has no partition (older than the ledger's partitioning) goes to the top-level
  DEFAULT partition. A partition cannot be created for a month or region whose rows already sit in a
  default (PostgreSQL checks, and refuses); such rows stay where they are, and correct, and the next
  month gets its partition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

TABLES = ("journal", "journal_funds", "transfers", "records")  # parent first: the others reference it
KEYS = {
    "journal": "entry_id",
    "journal_funds": "entry_id, fund_code",
    "transfers": "entry_id, seq",
    "records": "entry_id",
}
MONTHS_AHEAD = 2  # partitions exist for this month and the next two
# a region gets a partition of its own only if its code can name one
REGION_NAME = re.compile(r"^[0-9A-Za-z]{1,16}$")
MONTH = re.compile(r"^\d{4}-\d{2}$")


def month_after(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def months_from(month: str, count: int) -> list[str]:
    out = [month]
    for _ in range(count):
        out.append(month_after(out[-1]))
    return out


def month_table(table: str, month: str) -> str:
    return f"{table}_{month[:4]}_{month[5:7]}"


def region_table(table: str, month: str, region: str) -> str:
    return f"{month_table(table, month)}_r{region.lower()}"


def literal(value: str) -> str:
    """DDL takes no parameters; values here are checked against MONTH or REGION_NAME first."""
    return "'" + value.replace("'", "''") + "'"


def partition_ledger(cur: Any, today: str | None = None) -> None:
    """Migration 5, in the migration's transaction: new partitioned tables, partitions for every month
    and region the ledger already holds and for the months ahead, the rows moved across by INSERT ...
    SELECT, the old tables dropped. Fine for a city's first year; a ledger of billions of rows would
    instead attach its existing tables as one old partition."""
    month_now = today or datetime.now(UTC).strftime("%Y-%m")
    for table in TABLES:
        cur.execute(
            f"CREATE TABLE {table}_partitioned (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            " PARTITION BY LIST (at_month)"
        )
        cur.execute(f"ALTER TABLE {table}_partitioned ADD PRIMARY KEY ({KEYS[table]}, at_month, inst_region)")
        cur.execute(f"CREATE TABLE {table}_other PARTITION OF {table}_partitioned DEFAULT")
    cur.execute("SELECT DISTINCT at_month, inst_region FROM journal")
    held: dict[str, set[str]] = {}
    for month, region in cur.fetchall():
        if MONTH.match(str(month)):  # anything else (no entry has one) stays in the default partition
            held.setdefault(str(month), set()).add(str(region))
    for month in months_from(month_now, MONTHS_AHEAD):
        held.setdefault(month, set())
    for month, regions in sorted(held.items()):
        create_month(cur, month, regions, suffix="_partitioned")
    for table in TABLES:
        cur.execute(f"INSERT INTO {table}_partitioned SELECT * FROM {table}")
    for table in reversed(TABLES):
        cur.execute(f"DROP TABLE {table}")
    for table in TABLES:
        cur.execute(f"ALTER TABLE {table}_partitioned RENAME TO {table}")
    cur.execute(
        "CREATE UNIQUE INDEX journal_settled_once ON journal (settlement_id, kind, at_month, inst_region)"
        " WHERE kind IN ('settle', 'reverse')"
    )
    for statement in (
        "CREATE INDEX journal_settlement ON journal (settlement_id)",
        "CREATE INDEX journal_institution_month ON journal (institution, month)",
        "CREATE INDEX journal_message ON journal (institution, message_id)",
        "CREATE INDEX transfers_debit ON transfers (debit)",
        "CREATE INDEX transfers_credit ON transfers (credit)",
        "CREATE INDEX records_settlement ON records (settlement_id)",
        "CREATE INDEX records_person ON records (person_id, version)",
    ):
        cur.execute(statement)
    for table in TABLES[1:]:
        cur.execute(
            f"ALTER TABLE {table} ADD FOREIGN KEY (entry_id, at_month, inst_region)"
            " REFERENCES journal (entry_id, at_month, inst_region)"
        )


def create_month(cur: Any, month: str, regions: Iterable[str], suffix: str = "") -> tuple[bool, list[str]]:
    """A month's partitions of the four tables (with a default for the regions without one) and a
    partition for each of `regions` that has none. Returns (whether the month has partitions, the
    regions given a partition now). Each step in a savepoint: a month whose rows are in the top-level
    default, or a region whose rows are in the month's default, is refused by PostgreSQL and skipped."""
    if not MONTH.match(month):
        raise ValueError(f"at_month {month!r} is not YYYY-MM")
    month_ddl = [
        f"CREATE TABLE {month_table(t, month)} PARTITION OF {t}{suffix}"
        f" FOR VALUES IN ({literal(month)}) PARTITION BY LIST (inst_region)"
        for t in TABLES
    ]
    month_ddl += [
        f"CREATE TABLE {month_table(t, month)}_other PARTITION OF {month_table(t, month)} DEFAULT"
        for t in TABLES
    ]
    if not exists(cur, month_table("journal", month)) and not attempt(cur, month_ddl):
        return False, []
    created = []
    for region in sorted(set(regions)):
        if not REGION_NAME.match(region) or exists(cur, region_table("journal", month, region)):
            continue
        if attempt(
            cur,
            [
                f"CREATE TABLE {region_table(t, month, region)} PARTITION OF {month_table(t, month)}"
                f" FOR VALUES IN ({literal(region)})"
                for t in TABLES
            ],
        ):
            created.append(region)
    return True, created


def exists(cur: Any, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    return bool(cur.fetchone()[0])


def attempt(cur: Any, statements: list[str]) -> bool:
    """All of the statements or none (a savepoint), False when PostgreSQL refused them."""
    import psycopg

    cur.execute("SAVEPOINT partition_step")
    try:
        for statement in statements:
            cur.execute(statement)
    except (
        psycopg.errors.CheckViolation,  # rows of it sit in a default partition already
        psycopg.errors.DuplicateTable,  # another worker made it meanwhile
        psycopg.errors.UniqueViolation,  # ... and has not committed yet
    ):
        cur.execute("ROLLBACK TO SAVEPOINT partition_step")
        return False
    cur.execute("RELEASE SAVEPOINT partition_step")
    return True


def partitioned_regions(cur: Any) -> set[str]:
    """The regions that have a partition of their own in some month of the journal: each keeps one in
    the months ahead. Read from the partition bounds ("FOR VALUES IN ('500100')"), not the names."""
    cur.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname ~ '^journal_[0-9]{4}_[0-9]{2}$'"
    )
    out: set[str] = set()
    for (bound,) in cur.fetchall():
        out.update(r for r in re.findall(r"'([^']*)'", str(bound)) if REGION_NAME.match(r))
    return out


def months_without_partitions(cur: Any, month: str) -> int:
    """Of this month and the MONTHS_AHEAD after it, how many have no partitions yet."""
    return sum(not exists(cur, month_table("journal", m)) for m in months_from(month, MONTHS_AHEAD))


def ensure_month(cur: Any, month: str, regions: Iterable[str]) -> list[tuple[str, str]]:
    """One month's partitions, for `regions` and every region that has a partition already. Returns the
    (month, region) partitions created, the month's own as (month, ''). The caller commits each month on
    its own, so a month's DDL locks are held only as long as that month takes."""
    wanted = partitioned_regions(cur) | {r for r in regions if REGION_NAME.match(r)}
    had = exists(cur, month_table("journal", month))
    ok, created = create_month(cur, month, wanted)
    return ([(month, "")] if ok and not had else []) + [(month, r) for r in created]
