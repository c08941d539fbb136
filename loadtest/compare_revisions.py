"""Settle before and after a change, in one run: each revision's own gateway benchmark
(loadtest/bench_gateway.py of that revision, against that revision's `medsettle serve`), interleaved
old, new, old, new, so the machine's drift shows in the two figures of each revision.

    .venv/bin/python -m loadtest.compare_revisions [--old 8cd4cd5] [--new HEAD] [--seconds 8] [--rounds 2]
    .venv/bin/python -m loadtest.compare_revisions --bench floor --old HEAD --new WORKTREE

--bench gateway (the default) runs each revision's loadtest/bench_gateway.py, in plaintext; --bench floor
runs each revision's loadtest/bench_floor.py (the C load generator, mutual TLS, Settle and
QueryEligibility beside that run's own bare server), for revisions that have it: the figure to compare is
then each revision's ratio to its bare server, which takes out most of the drift between the runs.
A revision that compiles its engine (gateway/compiled_engine.py) gets it compiled in its folder, as
scripts/bootstrap does on a checkout. WORKTREE as a revision is the checkout's uncommitted state (`git
stash create`): a change measured before it is committed.

Each revision is exported with `git archive` into a temporary folder and run with this checkout's
virtualenv (the dependencies are the same; `python -m` puts the exported folder first on sys.path, so
its own modules are the ones imported, and its protobuf stubs are generated from its own proto/).
Revisions before the trust-at-the-edge change serve plaintext only, so every revision is measured in
plaintext (`--insecure` where the revision has it): the comparison is of the gateway's work per
Settle, not of TLS. Both benchmarks drive the gateway from a grpc.aio client on the same machine, so
the client's CPU is in both figures alike.

The default old revision, 8cd4cd5, is the last one before the money-over-time change (the person-year
fold, corrections, the institution-wide message-id claim and the bounds checks in the commit script).

Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(
    r"^(no-op Ping|Settle, 10-line outpatient)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", re.M
)
TRIPS = re.compile(r"redis commands sent per Settle \(round trips\): ([\d.]+) (\{.*\})")
INNER = re.compile(r"run inside the Lua scripts per Settle: ([\d.]+)")


@dataclass
class Figures:
    revision: str
    ping_max: int
    settle_max: int
    settle_cpu_us: int
    settle_p50_ms: float
    settle_p99_ms: float
    round_trips: str
    trips_detail: str
    in_scripts: str


def export(revision: str, into: Path) -> tuple[Path, str]:
    if revision == "WORKTREE":
        stash = subprocess.run(
            ["git", "stash", "create"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        revision = stash.stdout.strip() or "HEAD"  # nothing uncommitted: HEAD itself
    sha = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = into / sha
    folder.mkdir()
    archive = into / f"{sha}.tar"
    subprocess.run(["git", "archive", "-o", str(archive), sha], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    if (folder / "gateway" / "compiled_engine.py").exists():  # as scripts/bootstrap does on a checkout
        env = {**os.environ, "PYTHONPATH": str(folder)}
        build = [
            sys.executable,
            "-c",
            "import sys; from gateway.compiled_engine import build; sys.exit(build(True))",
        ]
        subprocess.run(build, cwd=folder, env=env, check=True, timeout=900)
    return folder, sha


def has_insecure(folder: Path) -> bool:
    return "--insecure" in (folder / "loadtest" / "bench_gateway.py").read_text()


def run(folder: Path, sha: str, seconds: float, rate: float) -> Figures:
    args = [sys.executable, "-m", "loadtest.bench_gateway", "--seconds", str(seconds), "--rate", str(rate)]
    if has_insecure(folder):
        args += ["--insecure", "--workers", str(os.cpu_count() or 1)]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{sha}: the benchmark failed\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    rows = {m.group(1): m.groups() for m in ROW.finditer(done.stdout)}
    trips, inner = TRIPS.search(done.stdout), INNER.search(done.stdout)
    if len(rows) != 2 or trips is None or inner is None:
        raise SystemExit(f"{sha}: unexpected benchmark output\n{done.stdout}")
    settle = rows["Settle, 10-line outpatient"]
    return Figures(
        revision=sha,
        ping_max=int(rows["no-op Ping"][1]),
        settle_max=int(settle[1]),
        settle_cpu_us=int(settle[3]),
        settle_p50_ms=float(settle[4]),
        settle_p99_ms=float(settle[5]),
        round_trips=trips.group(1),
        trips_detail=trips.group(2),
        in_scripts=inner.group(1),
    )


FLOOR_ROW = re.compile(
    r"^\| (bare grpc.aio no-op server[^|]*|QueryEligibility|Settle, 10 lines) "
    r"\| (\d+) \| ([\d.]+) \| (\d+) \|",
    re.M,
)


def run_floor(folder: Path, sha: str, seconds: float, rate: float) -> dict[str, tuple[int, float, int]]:
    """One bench_floor run of a revision: {row: (calls/s, vs bare, server CPU µs/call)}."""
    args = [sys.executable, "-m", "loadtest.bench_floor", "--calls", "bare,query,settle10",
            "--workers", str(os.cpu_count() or 1), "--rates", f"{rate:g}", "--no-plaintext-floor",
            "--seconds", str(seconds)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run(
        args, cwd=folder, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    rows: dict[str, tuple[int, float, int]] = {}
    for m in FLOOR_ROW.finditer(done.stdout):
        name = "bare" if m.group(1).startswith("bare") else m.group(1)
        rows.setdefault(name, (int(m.group(2)), float(m.group(3)), int(m.group(4))))
    if done.returncode != 0 or len(rows) != 3:
        raise SystemExit(f"{sha}: bench_floor failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return rows


def main_floor(args: argparse.Namespace) -> None:
    results: list[tuple[str, dict[str, tuple[int, float, int]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        old, old_sha = export(args.old, Path(tmp))
        new, new_sha = export(args.new, Path(tmp))
        for _ in range(args.rounds):
            for folder, sha in ((old, old_sha), (new, new_sha)):
                rows = run_floor(folder, sha, args.seconds, args.rate)
                print(f"measured {sha}: Settle {rows['Settle, 10 lines'][1]:.2f} of bare", flush=True)
                results.append((sha, rows))
    print(f"\nmutual TLS, {os.cpu_count()} processes, C load generator; each run beside its own bare server")
    print(
        "| revision | bare calls/s | Settle calls/s | vs bare | CPU µs | Query calls/s | vs bare | CPU µs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for sha, rows in results:
        b, s, q = rows["bare"], rows["Settle, 10 lines"], rows["QueryEligibility"]
        print(f"| {sha} | {b[0]} | {s[0]} | {s[1]:.2f} | {s[2]} | {q[0]} | {q[1]:.2f} | {q[2]} |")
    for name in ("Settle, 10 lines", "QueryEligibility"):
        for sha in dict.fromkeys(r[0] for r in results):
            mine = [rows[name] for s, rows in results if s == sha]
            ratio = sum(m[1] for m in mine) / len(mine)
            cpu = sum(m[2] for m in mine) / len(mine)
            print(f"{name}, {sha}: mean {ratio:.3f} of bare, {cpu:.0f} µs per call")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", default="8cd4cd5")
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=300.0, help="offered Settles/s for the latency run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bench", choices=["gateway", "floor"], default="gateway")
    args = parser.parse_args()
    if args.bench == "floor":
        main_floor(args)
        return
    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        old, old_sha = export(args.old, Path(tmp))
        new, new_sha = export(args.new, Path(tmp))
        for _ in range(args.rounds):
            for folder, sha in ((old, old_sha), (new, new_sha)):
                figures = run(folder, sha, args.seconds, args.rate)
                print(f"measured {sha}: {figures.settle_max} Settles/s", flush=True)
                results.append(figures)
    print(
        f"\nplaintext, {os.cpu_count()} gateway processes, Python client on the same machine; "
        f"rate {args.rate}/s"
    )
    print(
        f"{'revision':<10}{'Ping/s':>8}{'Settle/s':>10}{'vs Ping':>9}{'CPU µs':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'trips':>7}{'in Lua':>8}  commands sent per Settle"
    )
    for f in results:
        print(
            f"{f.revision:<10}{f.ping_max:>8}{f.settle_max:>10}{f.settle_max / f.ping_max:>9.2f}"
            f"{f.settle_cpu_us:>8}{f.settle_p50_ms:>8.2f}{f.settle_p99_ms:>8.2f}{f.round_trips:>7}"
            f"{f.in_scripts:>8}  {f.trips_detail}"
        )


if __name__ == "__main__":
    main()
