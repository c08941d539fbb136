"""Where the deployment's index key comes from (adapters.redis_keys.IndexKeys: card and ID numbers
become keyed hashes in Redis): $MEDSETTLE_INDEX_KEY (hex), else --index-key-file, else the data
folder's secrets/index.key. The embedded default creates that file (mode 0600) on first start; anything
else refuses to guess, since a process with another key would find no card."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from adapters.redis_keys import IndexKeys
from adapters.secret_files import read_secret, write_private

INDEX_KEY_ENV = "MEDSETTLE_INDEX_KEY"


def key_file(data_dir: Path) -> Path:
    return data_dir / "secrets" / "index.key"


def resolve(file: str | None, data_dir: Path, create: bool) -> bytes:
    """The index key, as bytes; `create` makes one in the data folder when there is none (the embedded
    default only)."""
    given = os.environ.get(INDEX_KEY_ENV)
    if given:
        return bytes.fromhex(given)
    path = Path(file) if file else key_file(data_dir)
    if path.exists():
        return bytes.fromhex(read_secret(path))
    if create and not file:
        key = secrets.token_bytes(32)
        write_private(path, key.hex().encode())
        return key
    raise SystemExit(
        f"medsettle: no index key (${INDEX_KEY_ENV}, --index-key-file, or {path}): card and ID numbers are"
        " keyed hashes in Redis, and every process of a deployment must use the deployment's one key"
    )


def index_keys(file: str | None, data_dir: Path, create: bool = False) -> IndexKeys:
    return IndexKeys(resolve(file, data_dir, create))
