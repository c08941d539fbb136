"""The compiled engine is used only when it was built from the sources on disk (a stale build would run
old rules), and MEDSETTLE_ENGINE=python always runs the sources. With CI=true and a C compiler, the
build must exist: the suite then exercises the engine as production runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import compiled_engine

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import importlib, inspect; m = importlib.import_module('gateway.engine.split');"
    "print('python' if inspect.isfunction(m.split) else 'compiled')"
)


def engine_kind(cwd: Path, path: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", compiled_engine.ENGINE_ENV)}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**clean, **({"PYTHONPATH": str(path)} if path else {}), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_the_sources_on_request() -> None:
    assert engine_kind(ROOT, ROOT, MEDSETTLE_ENGINE="python").stdout.strip() == "python"


def test_a_fresh_build_is_used_and_ci_has_one() -> None:
    built = compiled_engine.extension_modules() and compiled_engine.build_is_fresh()
    if os.environ.get("CI") == "true" and shutil.which("cc"):
        assert built, "CI has a C compiler: scripts/bootstrap should have compiled the engine"
    if not built:
        pytest.skip("no fresh build of the engine here (scripts/build-engine)")
    assert engine_kind(ROOT, ROOT).stdout.strip() == "compiled"


def test_a_process_started_anywhere_runs_the_build(tmp_path: Path) -> None:
    # the console scripts (.venv/bin/medsettle) start with .venv/bin, not the checkout, on sys.path:
    # the build's shared library must load without the checkout on the path (it once did not)
    if not (compiled_engine.extension_modules() and compiled_engine.build_is_fresh()):
        pytest.skip("no fresh build of the engine here (scripts/build-engine)")
    started = engine_kind(tmp_path)
    assert started.stdout.strip() == "compiled", started.stderr


def test_a_build_older_than_its_sources_is_never_run(tmp_path: Path) -> None:
    if not compiled_engine.extension_modules():
        pytest.skip("no build of the engine here (scripts/build-engine)")
    copy = tmp_path / "tree"
    shutil.copytree(
        ROOT / "gateway", copy / "gateway", ignore=shutil.ignore_patterns("__pycache__", "_proto")
    )
    for shared in ROOT.glob("*__mypyc*"):
        shutil.copy(shared, copy)
    fresh = engine_kind(copy, copy)
    assert fresh.stdout.strip() == ("compiled" if compiled_engine.build_is_fresh() else "python")
    split_py = copy / "gateway" / "engine" / "split.py"
    split_py.write_text(split_py.read_text() + "\n# an edit after the build\n")
    stale = engine_kind(copy, copy)
    assert stale.stdout.strip() == "python"
    assert "older than its sources" in stale.stderr
