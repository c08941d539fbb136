"""`medsettle load` and the embedded default: validate files from the core system, then publish the
static data (policies, catalogs, institutions) and write the persons. Nothing is written unless every
static file validates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from adapters.citydata_files import person_record, read_csv
from adapters.redis_store import RedisStore
from rules_cache.reader import DataError
from rules_cache.static_data import Publication

PERSONS_PER_FILE_MAX = 5_000_000


@dataclass(frozen=True, slots=True)
class LoadReport:
    versions: dict[str, str]
    persons: int


async def load_files(
    client: aioredis.Redis,
    policies: list[Path] = (),  # type: ignore[assignment]
    catalogs: dict[str, Path] | None = None,
    institutions: Path | None = None,
    persons: Path | None = None,
) -> LoadReport:
    publication = Publication()
    for path in policies:
        publication.add_policy(path.read_text(encoding="utf-8"), path.name)
    for region, path in (catalogs or {}).items():
        publication.add_catalog(region, read_csv(path))
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
    versions = await publication.publish(client)
    store = RedisStore(client)
    for i, record in enumerate(records):
        await store.put_person(record, f"{source}[{i}]")
    return LoadReport(versions, len(records))


async def load_citydata_dir(client: aioredis.Redis, root: Path) -> LoadReport:
    return await load_files(
        client,
        policies=sorted((root / "policies").glob("*.toml")),
        catalogs={p.stem: p for p in sorted((root / "catalogs").glob("*.csv"))},
        institutions=root / "institutions.csv",
        persons=root / "persons.json",
    )
