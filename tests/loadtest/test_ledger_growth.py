"""The ledger growth benchmark's short version on the real local PostgreSQL (loadtest/ledger_growth.py):
every table of the partitioned ledger is measured (a partitioned parent alone measures 0 bytes, which
the benchmark printed after migration 5 until it summed the partitions)."""

from __future__ import annotations

import re

import pytest

from loadtest import ledger_growth

from ..posting.conftest import POSTGRES, postgres_database


def test_every_table_of_the_partitioned_ledger_is_measured(capsys: pytest.CaptureFixture[str]) -> None:
    reachable = postgres_database()  # fails in CI, skips elsewhere, when PostgreSQL is not reachable
    next(reachable)
    reachable.close()  # drops the database it made
    assert ledger_growth.main(["--count", "200", "--postgres", POSTGRES]) == 0
    out = capsys.readouterr().out
    sizes = {
        m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+\d+ rows\s+(\d+) bytes per settlement", out, re.M)
    }
    assert set(sizes) == {"journal", "journal_funds", "transfers", "records"}, out
    assert all(size > 0 for size in sizes.values()), out
