"""Backup and restore on a real redis-server and real ledgers (SQLite and PostgreSQL): the two copies are
consistent (the ledger's is taken once posting has passed the RDB's instant), and after Redis and the
ledger are both lost, restore gives back every person's state and every journal entry as they were at
the backup; what came after is gone, and says so; a changed backup file is refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway import backup as bk
from gateway.audit import audit_redis
from gateway.config import Config
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.rebuild import rebuild
from gateway.server import Gateway, redis_client
from loadtest.synthetic import persons

from ..conftest import INDEX, INDEX_KEY, NOW
from .test_rebuild import CITYDATA, history, person_keys
from .test_worker import PERSONS, run_until_caught_up, settle_many

# backup copies one redis-server (a cluster URL is refused: the last test)
pytestmark = [pytest.mark.asyncio, pytest.mark.single_node]
ZONE = ZoneInfo("Asia/Shanghai")


def export() -> list[dict[str, object]]:
    return [*json.loads((CITYDATA / "persons.json").read_text(encoding="utf-8")), *persons(PERSONS)]


def lose_the_ledger(ledger: Ledger, dsn: str) -> None:
    ledger.close()
    if dsn.startswith("sqlite:///"):
        Path(dsn.removeprefix("sqlite:///")).unlink()
        return
    with ledger.transaction() as cur:
        for table in ("records", "month_closes", "transfers", "journal_funds", "journal", "schema_version"):
            cur.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    ledger.close()


async def test_a_backup_brings_back_both_stores_as_they_were(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger, ledger_dsn: str, redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> None:  # fmt: skip
    await history(gateway)
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    folder = tmp_path / "backup"
    manifest = await asyncio.to_thread(
        bk.backup, folder, redis_server.url, ledger_dsn, bk.posted_through_sync(redis_server.url, ZONE)
    )
    at_backup = person_keys(sync_redis)
    entries = int(ledger.query("SELECT COUNT(*) FROM journal")[0][0])
    assert manifest.journal_entries == entries > 60 and set(manifest.files) == {
        bk.REDIS_FILE, bk.SQLITE_FILE if ledger_dsn.startswith("sqlite") else bk.POSTGRES_FILE,
    }  # fmt: skip
    with pytest.raises(bk.BackupError, match="not empty"):
        bk.backup(folder, redis_server.url, ledger_dsn, bk.posted_through_sync(redis_server.url, ZONE))

    await settle_many(gateway, 5, start=1000)  # after the backup: lost with the disaster
    await gateway.stop()
    redis_server.stop()
    lose_the_ledger(ledger, ledger_dsn)

    bk.Manifest.read(folder).verify(folder)
    bk.restore_ledger(folder, manifest, ledger_dsn, force=False)
    bk.restore_redis_dir(folder, redis_server.dir)
    redis_server.start()
    restored = Ledger(ledger_dsn)
    client = redis_client(redis_server.url, Config())
    try:
        report = await rebuild(client, restored, export(), INDEX, NOW, force=True)
        assert report.problems == []
        assert int(restored.query("SELECT COUNT(*) FROM journal")[0][0]) == entries
        assert person_keys(sync_client(redis_server.url)) == at_backup
        audited = await audit_redis(redis_server.url, ledger_dsn)
        assert audited.differences == []
    finally:
        restored.close()
        await client.aclose()


async def test_a_backup_file_changed_afterwards_is_refused(
    gateway: Gateway, ledger: Ledger, ledger_dsn: str, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    folder = tmp_path / "backup"
    await asyncio.to_thread(
        bk.backup, folder, redis_server.url, ledger_dsn, bk.posted_through_sync(redis_server.url, ZONE)
    )
    with (folder / bk.REDIS_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(bk.BackupError, match="changed since the backup"):
        bk.Manifest.read(folder).verify(folder)


async def test_the_commands_back_up_and_restore_an_embedded_data_folder(
    gateway: Gateway, sync_redis: redis.Redis, tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(dsn)
    ledger.migrate()
    await history(gateway)
    worker = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="w1", retention=None))
    await asyncio.to_thread(run_until_caught_up, worker, sync_redis)
    at_backup = person_keys(sync_redis)
    env = {**os.environ, "MEDSETTLE_INDEX_KEY": INDEX_KEY.hex()}
    cli = [sys.executable, "-m", "gateway.cli"]
    out = tmp_path / "copy"
    made = subprocess.run([*cli, "backup", "--out", str(out), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    await gateway.stop()
    restore = [*cli, "restore", "--from", str(out), "--data-dir", str(tmp_path)]
    running = subprocess.run(
        [*restore, "--persons", str(CITYDATA / "persons.json")], capture_output=True, text=True, env=env
    )
    assert running.returncode == 1 and "is running: stop serve" in running.stderr
    redis_server.stop()
    people = tmp_path / "synthetic.json"
    people.write_text(json.dumps(persons(PERSONS)), encoding="utf-8")
    ledger.close()
    done = subprocess.run(
        [*restore, "--persons", str(CITYDATA / "persons.json"), "--persons", str(people), "--force"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no differences" in done.stdout
    redis_server.start()
    assert person_keys(sync_client(redis_server.url)) == at_backup
    assert list(tmp_path.glob("ledger.db.before-restore-*"))  # the ledger restored over is kept aside


def test_a_cluster_or_sentinel_url_is_refused_saying_what_backup_covers() -> None:
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "redis+sentinel://127.0.0.1:26379/mymaster"):
        with pytest.raises(bk.BackupError, match="one redis-server's data; a Redis Cluster or Sentinel"):
            bk.redis_argv(url)
