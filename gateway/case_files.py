"""Self-contained split cases (docs/SPLIT_CASES.md): one JSON file with the policy (by reference or
inline), the catalog entries, the institution, the person with their state, the bill and the date of
care. Used by `medsettle split` and by the shipped examples; results are written as JSON."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any

from adapters.citydata_files import citydata_dir, person_record
from gateway.engine import Rejected, Split, SplitOutcome, split
from gateway.engine.policy import Policy, in_force_on
from rules_cache import records
from rules_cache.policy_files import load_policy_file, parse_policy
from rules_cache.reader import DataError, Reader
from rules_cache.staging import stage


def resolve_policy(value: Any, case_path: Path, on: date) -> Policy:
    """A region code (the shipped version in force on the case's date), a path to a TOML file (relative
    to the case), or a table."""
    if isinstance(value, dict):
        return parse_policy(value, f"{case_path.name}#policy")
    if not isinstance(value, str) or not value:
        raise DataError(case_path.name, "policy", "expected a region code, a file path or a table")
    shipped = sorted((citydata_dir() / "policies").glob(f"{value}-*.toml"))
    if shipped:
        versions = tuple(stage([], [load_policy_file(p) for p in shipped]))
        policy = in_force_on(versions, on)
        if policy is None:
            raise DataError(
                case_path.name, "as_of", f"no shipped policy of region {value} is in force on {on}"
            )
        return policy
    path = (case_path.parent / value).resolve()
    if not path.is_file():
        raise DataError(case_path.name, "policy", f"{value!r} is neither a shipped region nor a file")
    return load_policy_file(path)


def load_case(path: Path) -> tuple[Any, ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path.name, "", f"not valid JSON: {exc}") from None
    r = Reader(data, path.name)
    on = r.day("as_of")
    policy = resolve_policy(r.raw("policy"), path, on)
    inst = records.institution(r.raw("institution"), path.name, "institution")
    rows = r.raw("catalog")
    if not isinstance(rows, list):
        raise r.error("expected a list of catalog entries", "catalog")
    version = r.text("catalog_version", f"{path.stem}-inline")
    catalog = records.catalog(rows, inst.region, version, path.name, lambda i: f"catalog[{i}]")
    rec = person_record(r.raw("person"), path.name, "person")
    bill = records.bill(r.raw("bill"), path.name, "bill")
    r.seen.update({"expect", "description"})  # for readers and for tests
    r.done()
    return bill, policy, catalog, inst, rec.person, rec.state, on


def run_case(path: Path) -> SplitOutcome:
    return split(*load_case(path))


def plain(value: Any) -> Any:
    """Dataclasses, enums, dates and mappings as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # NamedTuple records
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, Enum):
        return value.value if not isinstance(value.value, int) else value.name
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [plain(v) for v in value]
    return value


def outcome_json(outcome: SplitOutcome, with_trace: bool = True) -> dict[str, Any]:
    if isinstance(outcome, Rejected):
        return {
            "rejected": {
                "code": int(outcome.code),
                "name": outcome.code.name,
                "reason": outcome.reason,
                "line_no": outcome.line_no,
            }
        }
    assert isinstance(outcome, Split)
    body = plain(outcome)
    if not with_trace:
        body.pop("trace")
    return {"split": body}
