"""Importers for the files a core system exports (formats in citydata/README.md): catalogs and
institution registries as CSV, enrolments (persons) as JSON. Policies are TOML (rules_cache)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.engine.model import Catalog, Institution, Person, PersonState
from gateway.engine.policy import Policy
from rules_cache import records
from rules_cache.policy_files import load_policy_file
from rules_cache.reader import DataError
from rules_cache.staging import stage

DEFAULT_CITYDATA = Path(__file__).resolve().parent.parent / "citydata"


def citydata_dir() -> Path:
    return Path(os.environ.get("MEDSETTLE_CITYDATA", DEFAULT_CITYDATA))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_catalog(path: Path, region: str, version: str) -> Catalog:
    return records.catalog(read_csv(path), region, version, path.name, lambda i: f"line {i + 2}")


def load_institutions(path: Path) -> dict[str, Institution]:
    result: dict[str, Institution] = {}
    for i, row in enumerate(read_csv(path), start=2):
        inst = records.institution(row, path.name, f"line {i}")
        if inst.code in result:
            raise DataError(path.name, f"line {i}.code", f"duplicate code {inst.code}")
        result[inst.code] = inst
    return result


@dataclass(frozen=True, slots=True)
class PersonRecord:
    person: Person
    state: PersonState
    card_status: str


CARD_STATUSES = ("normal", "lost", "frozen", "cancelled")


def person_record(data: dict[str, Any], source: str, path: str) -> PersonRecord:
    status = data.get("card_status", "normal")
    if status not in CARD_STATUSES:
        raise DataError(
            source, f"{path}.card_status", f"{status!r} is not one of: {', '.join(CARD_STATUSES)}"
        )
    return PersonRecord(records.person(data, source, path), records.person_state(data, source, path), status)


def load_persons(path: Path) -> dict[str, PersonRecord]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path.name, "", f"not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise DataError(path.name, "", "expected a JSON array of persons")
    result: dict[str, PersonRecord] = {}
    for i, item in enumerate(items):
        rec = person_record(item, path.name, f"[{i}]")
        if rec.person.person_id in result:
            raise DataError(path.name, f"[{i}].person_id", f"duplicate person {rec.person.person_id}")
        result[rec.person.person_id] = rec
    return result


@dataclass(frozen=True, slots=True)
class CityData:
    """Everything the demo ships, loaded and validated."""

    policies: dict[str, tuple[Policy, ...]]  # staged versions, by region
    catalogs: dict[str, Catalog]  # by region
    institutions: dict[str, Institution]
    persons: dict[str, PersonRecord]


def load_citydata(root: Path | None = None) -> CityData:
    root = root or citydata_dir()
    by_region: dict[str, list[Policy]] = {}
    for path in sorted((root / "policies").glob("*.toml")):
        policy = load_policy_file(path)
        by_region.setdefault(policy.region, []).append(policy)
    # a region's versions follow one another, as a publication requires (rules_cache/staging.py)
    policies = {region: tuple(stage([], found)) for region, found in by_region.items()}
    catalogs = {}
    for path in sorted((root / "catalogs").glob("*.csv")):
        region = path.stem
        catalogs[region] = load_catalog(path, region, f"{region}-demo-2026.1")
    return CityData(
        policies, catalogs, load_institutions(root / "institutions.csv"), load_persons(root / "persons.json")
    )
