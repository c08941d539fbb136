"""`medsettle rebuild`: every person's Redis state again from the ledger and the person export
(gateway/rebuild.py), for a Redis that lost it. Gateways stopped; static data published with
`medsettle load` (or by `serve` on the embedded default); then `medsettle audit`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo


def register(sub: Any) -> None:
    from gateway import cli

    p = sub.add_parser(
        "rebuild", help="re-create every person's Redis state from the ledger and the person export"
    )
    p.add_argument(
        "--persons", action="append", required=True,
        help="the core system's person export (JSON, as for `load`): the one first loaded; repeat",
    )  # fmt: skip
    cli.secret_flags(p, "redis", "the Redis to rebuild (default: --data-dir's, started for the rebuild)")
    cli.secret_flags(p, "ledger", "the ledger (default with --data-dir: its ledger.db)")
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR, help="an embedded default's folder")
    cli.index_key_flags(p)
    p.add_argument("--force", action="store_true", help="rebuild over a Redis that still holds persons")
    p.add_argument("--timezone", default="Asia/Shanghai")
    p.set_defaults(func=rebuild_cmd, audited=True)


def rebuild_cmd(args: argparse.Namespace) -> int:
    from adapters.embedded_redis import EmbeddedRedis
    from gateway import cli

    url = cli.redis_url_of(args)
    embedded = None
    if url is None:
        embedded = EmbeddedRedis(Path(args.data_dir)).start()
        url = embedded.url
    try:
        return asyncio.run(run(args, url))
    finally:
        if embedded is not None:
            embedded.stop()


async def run(args: argparse.Namespace, url: str) -> int:
    from adapters.ledger.store import Ledger
    from adapters.redis_keys import IndexKeys
    from gateway import cli
    from gateway.config import Config
    from gateway.index_key import resolve
    from gateway.logs import AUDIT_LOG
    from gateway.rebuild import RebuildRefused, rebuild
    from gateway.server import redis_client

    persons: list[dict[str, Any]] = []
    for name in args.persons:
        data = json.loads(Path(name).read_text(encoding="utf-8"))
        if not isinstance(data, list):
            print(f"medsettle rebuild: {name}: expected a JSON array of persons", file=sys.stderr)
            return 2
        persons += data
    dsn = cli.ledger_dsn_of(args) or f"sqlite:///{(Path(args.data_dir) / 'ledger.db').resolve()}"
    index = IndexKeys(resolve(args.index_key_file, Path(args.data_dir), create=False))
    client = redis_client(url, Config())
    ledger = Ledger(dsn)
    try:
        now = datetime.now(ZoneInfo(args.timezone))
        report = await rebuild(client, ledger, persons, index, now, force=args.force)
    except RebuildRefused as exc:
        print(f"medsettle rebuild: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
        await client.aclose()
    AUDIT_LOG.info(
        "redis rebuilt from the ledger",
        extra={"event": "rebuild", "operator": cli.operator_of(args), "persons": report.persons_rebuilt,
               "settlements": report.settlements, "problems": len(report.problems)},
    )  # fmt: skip
    print("\n".join(report.lines()))
    return 1 if report.problems else 0
