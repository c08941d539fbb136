"""`medsettle backup` and `medsettle restore` (gateway/backup.py): Redis and the ledger copied together,
and put back together (then rebuilt, then audited). Gateways and the worker stopped for a restore."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo


def register(sub: Any) -> None:
    from gateway import cli

    p = sub.add_parser("backup", help="copy Redis (RDB) and the ledger into a folder, consistently")
    p.add_argument("--out", required=True, help="a new or empty folder")
    cli.secret_flags(p, "redis", "Redis to copy (default: --data-dir's; started for the copy if not running)")
    cli.secret_flags(p, "ledger", "the ledger (default with --data-dir: its ledger.db)")
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR, help="an embedded default's folder")
    p.add_argument(
        "--wait-posting-s", type=float, default=120.0, help="how long posting may take to catch up"
    )
    p.add_argument("--timezone", default="Asia/Shanghai")
    p.set_defaults(func=backup_cmd, audited=True)

    p = sub.add_parser(
        "restore",
        help="put a backup's ledger and Redis back, rebuild the persons, audit (everything stopped)",
    )
    p.add_argument("--from", dest="source", required=True, help="the backup's folder")
    p.add_argument("--persons", action="append", required=True, help="the person export first loaded; repeat")
    cli.secret_flags(p, "ledger", "the ledger to restore into (default with --data-dir: its ledger.db)")
    cli.secret_flags(
        p, "redis", "an external Redis the operator restored the RDB into (docs/OPERATIONS.md); default:"
        " the RDB goes into --data-dir's embedded Redis",
    )  # fmt: skip
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR, help="an embedded default's folder")
    cli.index_key_flags(p)
    p.add_argument("--force", action="store_true", help="restore over an existing ledger (moved aside)")
    p.add_argument("--timezone", default="Asia/Shanghai")
    p.set_defaults(func=restore_cmd, audited=True)


def running_url(data_dir: Path) -> str | None:
    """The embedded Redis's admin URL when that Redis answers."""
    import redis

    from adapters.secret_files import read_secret

    path = data_dir / "secrets" / "redis-admin.url"
    if not path.exists():
        return None
    url = read_secret(path)
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    return url


def backup_cmd(args: argparse.Namespace) -> int:
    from adapters.embedded_redis import EmbeddedRedis
    from gateway import backup as bk
    from gateway import cli
    from gateway.logs import AUDIT_LOG

    data_dir = Path(args.data_dir)
    url = cli.redis_url_of(args) or running_url(data_dir)
    embedded = None
    if url is None:
        embedded = EmbeddedRedis(data_dir).start()
        url = embedded.url
    dsn = cli.ledger_dsn_of(args) or f"sqlite:///{(data_dir / 'ledger.db').resolve()}"
    try:
        zone = ZoneInfo(args.timezone)
        manifest = bk.backup(Path(args.out), url, dsn, bk.posted_through_sync(url, zone), args.wait_posting_s)
    except bk.BackupError as exc:
        print(f"medsettle backup: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    AUDIT_LOG.info(
        "backup made",
        extra={"event": "backup", "operator": cli.operator_of(args), "folder": str(Path(args.out).resolve()),
               "redis_at": manifest.redis_at, "journal_entries": manifest.journal_entries},
    )  # fmt: skip
    print(json.dumps(manifest.as_json(), indent=2))
    return 0


def restore_cmd(args: argparse.Namespace) -> int:
    from adapters.embedded_redis import EmbeddedRedis
    from adapters.secret_files import mask_url
    from gateway import backup as bk
    from gateway import cli
    from gateway.audit import audit_redis
    from gateway.logs import AUDIT_LOG

    source, data_dir = Path(args.source), Path(args.data_dir)
    dsn = cli.ledger_dsn_of(args) or f"sqlite:///{(data_dir / 'ledger.db').resolve()}"
    external = cli.redis_url_of(args)
    embedded = None
    try:
        manifest = bk.Manifest.read(source)
        manifest.verify(source)
        if external is None and running_url(data_dir) is not None:
            raise bk.BackupError(f"the Redis of {data_dir} is running: stop serve (and workers) first")
        bk.restore_ledger(source, manifest, dsn, args.force)
        print(f"ledger restored into {mask_url(dsn)} ({manifest.journal_entries} journal entries)")
        url = external
        if url is None:
            bk.restore_redis_dir(source, (data_dir / "redis").resolve())
            embedded = EmbeddedRedis(data_dir).start()
            url = embedded.url
            print(f"redis restored into {data_dir / 'redis'} (the RDB of {manifest.redis_at})")
        report = asyncio.run(rebuild_over(args, url, dsn))
        print("\n".join(report.lines()))
        audited = asyncio.run(audit_redis(url, dsn))
        print("\n".join(audited.lines()))
    except bk.BackupError as exc:
        print(f"medsettle restore: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    AUDIT_LOG.info(
        "backup restored",
        extra={"event": "restore", "operator": cli.operator_of(args), "folder": str(source.resolve()),
               "redis_at": manifest.redis_at, "differences": len(audited.differences)},
    )  # fmt: skip
    return 1 if report.problems or audited.differences else 0


async def rebuild_over(args: argparse.Namespace, url: str, dsn: str) -> Any:
    """The persons the ledger knows, rebuilt over the restored Redis: what was booked between the Redis
    copy and the ledger copy is in Redis again."""
    from datetime import datetime

    from adapters.ledger.store import Ledger
    from adapters.redis_keys import IndexKeys
    from gateway.config import Config
    from gateway.index_key import resolve
    from gateway.rebuild import rebuild
    from gateway.server import redis_client

    persons: list[dict[str, Any]] = []
    for name in args.persons:
        persons += json.loads(Path(name).read_text(encoding="utf-8"))
    index = IndexKeys(resolve(args.index_key_file, Path(args.data_dir), create=False))
    client = redis_client(url, Config())
    ledger = Ledger(dsn)
    try:
        ledger.migrate()  # a backup of an older release's ledger comes up to this schema first
        return await rebuild(
            client, ledger, persons, index, datetime.now(ZoneInfo(args.timezone)), force=True
        )
    finally:
        ledger.close()
        await client.aclose()
