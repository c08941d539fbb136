"""`medsettle load` and the embedded default: validate files from the core system, then publish the
static data (policies, catalogs, institutions) and write the persons. Nothing is written unless every
static file validates."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from adapters.citydata_files import person_record, read_csv
from adapters.redis_keys import IndexKeys
from adapters.redis_store import RedisStore
from rules_cache.reader import DataError
from rules_cache.static_data import Publication

PERSONS_PER_FILE_MAX = 5_000_000


@dataclass(frozen=True, slots=True)
class LoadReport:
    versions: dict[str, str]
    persons: int
    timelines: list[str] = field(default_factory=list)


async def load_files(
    client: aioredis.Redis,
    policies: list[Path] = (),  # type: ignore[assignment]
    catalogs: dict[str, Path] | None = None,
    institutions: Path | None = None,
    persons: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    index: IndexKeys | Callable[[], IndexKeys] | None = None,
) -> LoadReport:
    """`index` (or what makes it, asked only once every file is valid) hashes the card and ID numbers of
    the persons written. With `dry_run`, everything is validated and `timelines` says what would be in
    force on which dates; nothing is written. `force` publishes a policy version that leaves a gap or
    replaces one beginning on the same day (rules_cache/staging.py)."""
    publication = Publication()
    for path in policies:
        publication.add_policy(path.read_text(encoding="utf-8"), path.name)
    for region, path in (catalogs or {}).items():
        publication.add_catalog(region, read_csv(path), source=path.name, where=lambda i: f"line {i + 2}")
    if institutions is not None:
        publication.add_institutions(read_csv(institutions))
    records = []
    if persons is not None:
        try:
            records = json.loads(persons.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(persons.name, "", f"not valid JSON: {exc}") from None
        if not isinstance(records, list) or len(records) > PERSONS_PER_FILE_MAX:
            raise DataError(
                persons.name, "", f"expected a JSON array of at most {PERSONS_PER_FILE_MAX} persons"
            )
    source = persons.name if persons else ""
    for i, record in enumerate(records):  # validate every person before writing any
        person_record(record, source, f"[{i}]")
    versions = await publication.publish(client, force=force, dry_run=dry_run)
    if dry_run:
        return LoadReport(versions, 0, publication.timelines)
    if records and index is None:
        raise DataError(source, "", "persons need the deployment's index key (card numbers are keyed hashes)")
    if callable(index):
        index = index()
    store = RedisStore(client, index)
    if records:
        await store.verify_index()
    for i, record in enumerate(records):
        await store.put_person(record, f"{source}[{i}]")
    return LoadReport(versions, len(records), publication.timelines)


async def load_citydata_dir(
    client: aioredis.Redis,
    root: Path,
    force: bool = False,
    dry_run: bool = False,
    index: IndexKeys | Callable[[], IndexKeys] | None = None,
) -> LoadReport:
    return await load_files(
        client,
        policies=sorted((root / "policies").glob("*.toml")),
        catalogs={p.stem: p for p in sorted((root / "catalogs").glob("*.csv"))},
        institutions=root / "institutions.csv",
        persons=root / "persons.json",
        force=force,
        dry_run=dry_run,
        index=index,
    )
