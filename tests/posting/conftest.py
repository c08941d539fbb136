"""Ledgers on real databases: SQLite in a temporary folder, and PostgreSQL (a fresh database per test on
the local server, or MEDSETTLE_TEST_POSTGRES). Without a reachable PostgreSQL the PostgreSQL cases skip
with the reason, except in CI (CI=true), where they fail: CI must not skip them silently."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.ledger.store import Ledger

POSTGRES = os.environ.get("MEDSETTLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_database() -> Iterator[str]:
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {POSTGRES}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must run the PostgreSQL tests)")
        pytest.skip(reason)
    name = f"medsettle_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        yield from postgres_database()


@pytest.fixture
def ledger(ledger_dsn: str) -> Iterator[Ledger]:
    ledger = Ledger(ledger_dsn)
    ledger.migrate()
    yield ledger
    ledger.close()
