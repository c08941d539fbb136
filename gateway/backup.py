"""`medsettle backup` and `medsettle restore`: Redis and the ledger (SQLite or PostgreSQL) copied to a
folder together, and brought back together.

Two stores cannot be copied at one instant, so the order makes the copy consistent: Redis first (a
point-in-time RDB over the replication protocol, `redis-cli --rdb`), then, once posting has passed the
instant of the RDB (every settlement in it is in the ledger), the ledger (SQLite's online backup API;
`pg_dump` for PostgreSQL). The ledger copy is then a superset of what the Redis copy committed. Restore
puts both back and runs `rebuild` for the persons the ledger knows (gateway/rebuild.py), so a settlement
booked between the two copies is in Redis again too; what the RDB alone holds (static data, persons
without settlements, voided message ids) comes from it. A manifest with each file's SHA-256 is checked
before anything is restored.

Each tool is the store's own: redis-cli and redis-server (the ones the project already runs),
pg_dump/pg_restore (Debian's postgresql-client), sqlite3's backup API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import redis

from adapters.embedded_redis import free_port, redis_server_binary

MANIFEST = "manifest.json"
REDIS_FILE = "redis.rdb"
SQLITE_FILE = "ledger.sqlite"
POSTGRES_FILE = "ledger.pgdump"
POSTING_WAIT_S = 120.0  # the longest a backup waits for posting to pass the RDB's instant
TOOL_TIMEOUT_S = 3600.0  # one dump or restore of a store


class BackupError(Exception):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def redis_cli() -> str:
    beside = Path(redis_server_binary()).with_name("redis-cli")
    found = str(beside) if beside.exists() else shutil.which("redis-cli")
    if not found:
        raise BackupError("no redis-cli (it comes with redis-server)")
    return found


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"no {name} on PATH (Debian: postgresql-client)")
    return found


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, timeout=TOOL_TIMEOUT_S
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).decode(errors="replace").strip()[-500:]
        raise BackupError(f"{Path(argv[0]).name} failed ({done.returncode}): {detail}")


def redis_argv(url: str) -> tuple[list[str], dict[str, str]]:
    """redis-cli connection flags for a URL; the password goes in the environment (argv is visible to
    every user of the machine)."""
    if url.startswith(("redis+cluster://", "redis+sentinel://")):
        raise BackupError(
            "backup and restore copy one redis-server's data; a Redis Cluster or Sentinel deployment is not"
            " covered yet: rely on its replicas and each node's AOF (docs/OPERATIONS.md, Backup)"
        )
    u = urlparse(url)
    argv = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    if u.username:
        argv += ["--user", unquote(u.username)]
    if u.scheme == "rediss":
        argv.append("--tls")
    return argv, ({"REDISCLI_AUTH": unquote(u.password)} if u.password else {})


def postgres_args(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and the password for PGPASSWORD."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    password = params.pop("password", "")
    return make_conninfo(**params), ({"PGPASSWORD": password} if password else {})


# ---------------------------------------------------------------- backup


@dataclass(frozen=True, slots=True)
class Manifest:
    created_at: str
    redis_at: str  # the RDB's instant (just before it was asked for)
    ledger_kind: str  # sqlite | postgresql
    files: dict[str, str]  # name -> sha256
    journal_entries: int

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")

    def as_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @staticmethod
    def read(folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            return Manifest(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise BackupError(f"{folder / MANIFEST}: not a backup manifest ({exc})") from None

    def verify(self, folder: Path) -> None:
        for name, digest in self.files.items():
            path = folder / name
            if not path.exists() or sha256(path) != digest:
                raise BackupError(
                    f"{path}: missing or changed since the backup (SHA-256 differs): not restored"
                )


def backup(
    folder: Path,
    redis_url: str,
    ledger_dsn: str,
    posted_through: Callable[[], datetime],
    wait_s: float = POSTING_WAIT_S,
) -> Manifest:
    """Redis, then (posting past the RDB's instant) the ledger, into an empty or new folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: a backup goes into a folder of its own")
    redis_at = datetime.now(UTC)
    argv, env = redis_argv(redis_url)
    run([redis_cli(), *argv, "--rdb", str(folder / REDIS_FILE)], env)
    deadline = time.monotonic() + wait_s
    while posted_through() < redis_at:
        if time.monotonic() > deadline:
            raise BackupError(
                f"posting has not passed {redis_at.isoformat(timespec='seconds')} within {wait_s:.0f} s"
                " (a backlog or dead letters: medsettle deadletters list); the ledger copy would miss"
                " settlements the Redis copy holds, so none was made"
            )
        time.sleep(0.5)
    postgres = ledger_dsn.startswith(("postgresql://", "postgres://"))
    if postgres:
        dsn, env = postgres_args(ledger_dsn)
        run([tool("pg_dump"), "--format=custom", "--no-owner", f"--file={folder / POSTGRES_FILE}", dsn], env)
        ledger_file = POSTGRES_FILE
    else:
        source = sqlite3.connect(ledger_dsn.removeprefix("sqlite:///"))
        target = sqlite3.connect(folder / SQLITE_FILE)
        try:
            source.backup(target)  # a consistent copy while the worker writes
        finally:
            target.close()
            source.close()
        ledger_file = SQLITE_FILE
    entries = journal_count(ledger_dsn)
    manifest = Manifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        redis_at=redis_at.isoformat(timespec="milliseconds"),
        ledger_kind="postgresql" if postgres else "sqlite",
        files={name: sha256(folder / name) for name in (REDIS_FILE, ledger_file)},
        journal_entries=entries,
    )
    manifest.write(folder)
    return manifest


def journal_count(dsn: str) -> int:
    from adapters.ledger.store import Ledger

    ledger = Ledger(dsn)
    try:
        return int(ledger.query("SELECT COUNT(*) FROM journal")[0][0])
    finally:
        ledger.close()


# ---------------------------------------------------------------- restore


def restore_ledger(folder: Path, manifest: Manifest, ledger_dsn: str, force: bool) -> None:
    postgres = ledger_dsn.startswith(("postgresql://", "postgres://"))
    if postgres != (manifest.ledger_kind == "postgresql"):
        raise BackupError(f"the backup holds a {manifest.ledger_kind} ledger; the target is not one")
    if postgres:
        dsn, env = postgres_args(ledger_dsn)
        if not force and journal_exists(ledger_dsn):
            raise BackupError("the target database has a ledger: restore into an empty one, or --force")
        run([tool("pg_restore"), "--clean", "--if-exists", "--no-owner", f"--dbname={dsn}",
             str(folder / POSTGRES_FILE)], env)  # fmt: skip
        return
    target = Path(ledger_dsn.removeprefix("sqlite:///"))
    if target.exists() and not force:
        raise BackupError(f"{target} exists: restore over it with --force (it is moved aside, not deleted)")
    if target.exists():
        target.rename(target.with_name(f"{target.name}.before-restore-{int(time.time())}"))
    for suffix in ("-wal", "-shm"):  # the old file's write-ahead log must not be replayed into the copy
        stale = target.with_name(target.name + suffix)
        if stale.exists():
            stale.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / SQLITE_FILE, target)


def journal_exists(dsn: str) -> bool:
    from adapters.ledger.store import Ledger

    ledger = Ledger(dsn)
    try:
        return ledger.schema_version() > 0
    finally:
        ledger.close()


def restore_redis_dir(folder: Path, redis_dir: Path) -> None:
    """An embedded Redis's folder from the RDB: the old folder moved aside, the RDB loaded by a
    redis-server of its own (AOF off, loopback, no users), the AOF written from it, the server stopped;
    the next start of the gateway's Redis loads that AOF."""
    if redis_dir.exists() and any(redis_dir.iterdir()):
        redis_dir.rename(redis_dir.with_name(f"{redis_dir.name}.before-restore-{int(time.time())}"))
    redis_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / REDIS_FILE, redis_dir / "dump.rdb")
    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
         "--dbfilename", "dump.rdb", "--appendonly", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=30)
    try:
        wait_until(lambda: ping(client), 30, "the restore's redis-server did not start")
        wait_until(lambda: not client.info("persistence").get("loading"), 600, "the RDB did not load")
        client.config_set("appendonly", "yes")  # rewrites the AOF from what was loaded
        wait_until(
            lambda: (
                not client.info("persistence").get("aof_rewrite_in_progress")
                and not client.info("persistence").get("aof_rewrite_scheduled")
            ),
            600,
            "the AOF was not written",
        )
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection
    finally:
        client.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    (redis_dir / "dump.rdb").unlink(missing_ok=True)  # the AOF is the truth from now on


def ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(condition: Callable[[], Any], timeout_s: float, why: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BackupError(why)
        time.sleep(0.1)


async def posted_through_of(client: Any, zone: Any) -> datetime:
    from gateway.ledger_service import LedgerService

    watermark = await LedgerService(None, client, lambda: datetime.now(zone)).posted_through()
    return datetime.fromisoformat(watermark)


def posted_through_sync(redis_url: str, zone: Any) -> Callable[[], datetime]:
    """The watermark, asked from a fresh event loop each time (the backup itself is synchronous)."""
    from gateway.config import Config
    from gateway.server import redis_client

    async def once() -> datetime:
        client = redis_client(redis_url, Config())
        try:
            return await posted_through_of(client, zone)
        finally:
            await client.aclose()

    return lambda: asyncio.run(once())
