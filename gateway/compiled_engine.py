"""The engine compiled with mypyc, and the guard that keeps a stale build from ever running.

`scripts/build-engine` (run by scripts/bootstrap when a C compiler is present) compiles gateway/engine/
with mypyc: the code is fully typed (mypy --strict), so mypyc turns it into C extension modules beside the
sources, about three times faster per split (docs/BENCHMARKS.md). Python imports an extension module in
preference to the .py of the same name, so an edit to a source file would otherwise be shadowed by the
old build. The build therefore records a digest of the sources it compiled (STAMP), and `prepare()`,
which gateway/__init__ runs before anything can import the engine, checks it: when the sources have
changed since, or when MEDSETTLE_ENGINE=python asks for it, the engine is imported from its sources (a
finder placed first on sys.meta_path that offers only the .py files) and the build is left on disk.

This module imports nothing of the engine; it runs at every process start, so it reads a dozen small
files (about a millisecond)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "gateway.engine"
ENGINE_DIR = Path(__file__).resolve().parent / "engine"
ROOT = ENGINE_DIR.parent.parent
STAMP = ENGINE_DIR / ".compiled-from"  # the digest of the sources the extension modules were built from
ENGINE_ENV = "MEDSETTLE_ENGINE"  # "python": ignore a build; anything else or unset: use a fresh build


def sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(ENGINE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def extension_modules() -> list[Path]:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in ENGINE_DIR.iterdir() if p.name.endswith(suffixes))


def build_is_fresh() -> bool:
    try:
        return STAMP.read_text().strip() == sources_digest()
    except FileNotFoundError:
        return False


class SourceOnly:
    """Finds gateway.engine and its modules from their .py files only, never an extension module. (A
    plain class with find_spec, which is all sys.meta_path asks: importlib.abc would import tempfile
    and random into every process, and the engine's purity test forbids random.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE and not fullname.startswith(PACKAGE + "."):
            return None
        directory = str(ENGINE_DIR.parent if fullname == PACKAGE else ENGINE_DIR)
        finder = importlib.machinery.FileFinder(
            directory, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        )
        return finder.find_spec(fullname, target)


def shared_libraries() -> list[Path]:
    """mypyc's library of the build's shared code (`<hash>__mypyc.<suffix>`), which it writes beside the
    top-level packages and every compiled module imports by that top-level name."""
    return sorted(ROOT.glob(f"*__mypyc{importlib.machinery.EXTENSION_SUFFIXES[0]}"))


def load_shared_libraries() -> str | None:
    """Loads the build's shared library from its file, under its module name, before any compiled
    module asks for it: the project root is on sys.path only for a process started there (the
    console scripts in .venv/bin are not), so `import <hash>__mypyc` must not depend on it. Returns
    why it could not, or None."""
    found = shared_libraries()
    if not found:
        return "the build's shared library is missing"
    for path in found:
        name = path.name.split(".", 1)[0]
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return f"{path.name} cannot be loaded"
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as exc:
            return f"{path.name}: {exc}"
        sys.modules[name] = module
    return None


def prepare() -> str:
    """Chooses how the engine is imported; returns "compiled" or "python" (also as `kind()`)."""
    global _kind
    built = extension_modules()
    wanted = os.environ.get(ENGINE_ENV, "") != "python"
    why = "older than its sources"
    if built and wanted and build_is_fresh():
        problem = load_shared_libraries()
        if problem is None:
            _kind = "compiled"
            return _kind
        why = f"not loadable ({problem})"
    if built and not any(isinstance(f, SourceOnly) for f in sys.meta_path):
        if wanted:  # say so once per process, and run the sources
            print(
                f"medsettle: the compiled engine is {why}; running the sources "
                "(scripts/build-engine rebuilds it)",
                file=sys.stderr,
            )
        sys.meta_path.insert(0, SourceOnly())
    _kind = "python"
    return _kind


_kind = "python"


def kind() -> str:
    return _kind


def build(quiet: bool = False) -> int:
    """Compiles the engine in place with mypyc and records the digest of what it compiled."""
    import subprocess  # only here: every process imports this module before the engine

    digest = sources_digest()
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", "gateway/engine"],
        cwd=ROOT,
        capture_output=quiet,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if quiet:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        return done.returncode
    STAMP.write_text(digest + "\n")
    return 0


def clean() -> None:
    """Removes the build: the engine runs from its sources again."""
    for path in [*extension_modules(), *shared_libraries()]:
        path.unlink(missing_ok=True)
    STAMP.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """scripts/build-engine [build [--quiet] | clean | status]"""
    action = argv[0] if argv else "build"
    if action == "build":
        return build(quiet="--quiet" in argv)
    if action == "clean":
        clean()
        return 0
    if action == "status":
        print(kind() if extension_modules() else "python (no build)")
        return 0
    print("usage: scripts/build-engine [build [--quiet] | clean | status]", file=sys.stderr)
    return 2
