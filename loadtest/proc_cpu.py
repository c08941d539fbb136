"""CPU time of server processes from /proc, for CPU per call: user + system seconds of a process (all its
threads), of a supervisor's children (the gateway processes of `serve`, those of the bare server), read
before and after a measured window. Linux only; no dependency beyond the standard library."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name, which may hold spaces and parentheses)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # gone meanwhile


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far; 0 when it no longer exists."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def children(parent: int) -> list[int]:
    """The parent's child processes: from /proc/PID/task/*/children where the kernel keeps it, else by
    scanning every process's parent id."""
    tasks = PROC / str(parent) / "task"
    found: set[int] = set()
    try:
        for task in tasks.iterdir():
            text = (task / "children").read_text()
            found.update(int(pid) for pid in text.split())
        return sorted(found)
    except OSError:
        pass  # kernels without CONFIG_PROC_CHILDREN
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.add(int(entry.name))
    return sorted(found)


Snapshot = dict[int, float]


def snapshot(pids: list[int]) -> Snapshot:
    return {pid: cpu_seconds(pid) for pid in pids}


def used(before: Snapshot, after: Snapshot) -> Snapshot:
    """CPU seconds each process used between two snapshots. A process that started in between counts
    from zero; one that ended in between is missing from `after`, so its last part is lost (a gateway
    process restarted by the supervisor mid-window: rare, and the benchmark would show its errors)."""
    return {pid: seconds - before.get(pid, 0.0) for pid, seconds in after.items()}


def children_cpu_seconds(parent: int) -> float:
    """User + system seconds so far of the parent's children together (the gateway processes of
    `serve`, not the supervisor, which only waits)."""
    return sum(cpu_seconds(pid) for pid in children(parent))
