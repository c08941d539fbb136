"""Which package may import which (beancount's tools/dependency_constraints.py is the model). From the
bottom up:

    gateway.engine   the pure money core: split, plan-year fold, corrections, routing; stdlib only
    telemetry        metric definitions; no project imports
    rules_cache      static data: policy files, record codecs, versioned keys, the L1 over Redis L2
    adapters         Redis store and scripts, ledger stores, importers, embedded redis-server
    gateway          the service layer and the edges: service, servicer, server, CLI, posting worker
    loadtest         benchmarks and load tests, on top of everything

A module may import its own layer and the layers below it, never one above: the core and the adapters
never reach back up into the service layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["gateway.engine", "telemetry", "rules_cache", "adapters", "gateway", "loadtest"]
PROJECT = ("gateway", "telemetry", "rules_cache", "adapters", "loadtest")
# The core may use nothing but the standard library: no I/O client, no protobuf, no logging framework.
CORE_THIRD_PARTY_ALLOWED: frozenset[str] = frozenset()


def layer_of(module: str) -> int:
    best = -1
    for i, prefix in enumerate(LAYERS):
        if (module == prefix or module.startswith(prefix + ".")) and (
            best < 0 or len(prefix) > len(LAYERS[best])
        ):
            best = i
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str) -> list[tuple[int, str]]:
    tree = ast.parse(source, name)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    out = []
    for package in PROJECT:
        out += [p for p in (ROOT / package).rglob("*.py") if "_proto" not in p.parts]
    return sorted(out)


def check(own: str, source: str) -> list[str]:
    found = []
    own_layer = layer_of(own)
    for line, imported in imports_of(source, own):
        top = imported.split(".")[0]
        if top in PROJECT:
            if layer_of(imported) > own_layer:
                found.append(f"{own}:{line}: imports {imported} (a higher layer)")
        elif own_layer == 0 and top not in CORE_THIRD_PARTY_ALLOWED and not is_stdlib(top):
            found.append(f"{own}:{line}: the core imports {imported}")
    return found


def violations() -> list[str]:
    found = []
    for path in sources():
        found += check(module_name(path), path.read_text(encoding="utf-8"))
    return found


def is_stdlib(top: str) -> bool:
    import sys

    return top in sys.stdlib_module_names or top == "__future__"


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("adapters.ledger.store", "from gateway.posting.statements import fund_spend"),
        ("rules_cache.static_data", "from adapters import redis_keys"),
        ("gateway.engine.split", "import rules_cache.records"),
        ("telemetry.metrics", "from rules_cache.records import LINES_MAX"),
        ("gateway.engine.plan_year", "import redis"),
        ("gateway.engine.money", "from google.protobuf import message"),
    ],
)
def test_the_check_catches_an_upward_or_impure_import(module: str, source: str) -> None:
    assert check(module, source)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("adapters.redis_store", "from rules_cache import records"),
        ("gateway.service", "from adapters.redis_store import RedisStore"),
        ("gateway.engine.split", "from dataclasses import dataclass"),
    ],
)
def test_the_check_allows_imports_downward(module: str, source: str) -> None:
    assert check(module, source) == []
