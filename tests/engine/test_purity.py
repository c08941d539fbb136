"""The engine is a pure function: it may import only the standard library's value types and itself.
Anything that could do I/O, read a clock, draw random numbers or log fails this test."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "gateway" / "engine"
ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "typing",
    "functools",
    "bisect",
    "itertools",
}
FORBIDDEN_CALLS = {"today", "now", "utcnow", "time", "monotonic", "perf_counter", "random", "open", "print"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_engine_imports_nothing_that_does_io() -> None:
    for path in sorted(ENGINE.glob("*.py")):
        for module in imports(path):
            top = module.split(".")[0]
            assert top in ALLOWED or module.startswith("gateway.engine"), f"{path.name} imports {module}"


def test_engine_calls_no_clock_random_or_print() -> None:
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                assert name not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {name}()"


def test_importing_the_engine_loads_no_io_module() -> None:
    code = (
        "import sys; import gateway.engine; "
        "io = {'socket', 'redis', 'grpc', 'sqlite3', 'psycopg', 'logging', 'random', 'asyncio'};"
        "bad = io & set(sys.modules);"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
