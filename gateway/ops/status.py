"""Health across the processes of one `serve`: each gateway process writes its verdict (serving or not,
why, the port of its own /healthz) to a small file in the run folder every STATUS_EVERY_S; the
supervisor's /healthz is 200 only when every gateway process it started is alive and says SERVING
recently, the embedded worker (if any) is alive, and Redis answers the supervisor itself."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "MEDSETTLE_RUN_DIR"
STATUS_EVERY_S = 1.0
STATUS_STALE_S = 5.0  # a gateway process that has not written its status this long is not answering


def status_path(run_dir: Path, pid: int) -> Path:
    return run_dir / f"gateway-{pid}.json"


def write_status(run_dir: Path, serving: bool, reason: str, health_port: int) -> None:
    """Atomically (rename), so the supervisor never reads half a file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = status_path(run_dir, os.getpid())
    tmp = path.with_suffix(".tmp")
    state = {"pid": os.getpid(), "serving": serving, "reason": reason, "port": health_port, "at": time.time()}
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_status(run_dir: Path, pid: int) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(status_path(run_dir, pid).read_text())
        return data
    except (OSError, ValueError):
        return None


@dataclass
class Child:
    """What the supervisor knows of one process it started."""

    pid: int
    alive: bool


def supervisor_health(
    run_dir: Path,
    gateways: Sequence[Child],
    worker: Child | None,
    redis_check: Callable[[], tuple[str, str]],
) -> tuple[bool, str]:
    """(healthy, one line per part). `redis_check` returns ('', what it is) when Redis answers and is fit
    to hold money, else (why not, '')."""
    lines = []
    ok = True
    now = time.time()
    for child in gateways:
        status = read_status(run_dir, child.pid) if child.alive else None
        if not child.alive:
            ok = False
            lines.append(f"gateway process {child.pid}: exited (being restarted)")
        elif status is None:
            ok = False
            lines.append(f"gateway process {child.pid}: no status yet")
        elif now - float(status["at"]) > STATUS_STALE_S:
            ok = False
            lines.append(f"gateway process {child.pid}: no status for {now - float(status['at']):.1f}s")
        else:
            ok = ok and bool(status["serving"])
            word = "SERVING" if status["serving"] else "NOT_SERVING"
            lines.append(
                f"gateway process {child.pid}: {word}: {status['reason']} (/healthz on :{status['port']})"
            )
    if worker is not None:
        ok = ok and worker.alive
        lines.append(
            f"posting worker {worker.pid}: {'running' if worker.alive else 'exited (being restarted)'}"
        )
    problem, detail = redis_check()
    ok = ok and not problem
    lines.append(f"redis: {problem or detail}")
    return ok, "\n".join(lines)
