"""`serve` heals: its processes die with it (a SIGKILLed supervisor leaves no gateway process serving,
no worker, no redis-server on its AOF), a new serve on the same port then works, and /healthz on the
supervisor and on each gateway process says what its dependencies say."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "gateway.cli"]
GONE_WITHIN_S = 30.0  # generous: a clean stop takes the 5 s shutdown grace, on a busy 2-core machine


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_serve(tmp_path: Path, listen: str) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", listen, "--data-dir", str(tmp_path), "--metrics-port", "0",
         "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    found: dict[str, int] = {}
    for line in proc.stdout:
        for key, pattern in (("grpc", r"listening on 127.0.0.1:(\d+)"), ("metrics", r"metrics on http://127.0.0.1:(\d+)")):  # fmt: skip  # noqa: E501
            match = re.search(pattern, line)
            if match:
                found[key] = int(match.group(1))
        if "serving;" in line:
            return proc, found
    raise AssertionError(f"serve did not start: {proc.wait()}")


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def demo(tmp_path: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "demo", "--target", f"127.0.0.1:{port}", "--certs", str(tmp_path / "certs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_killed_supervisor_leaves_nothing_behind_and_a_new_serve_takes_the_port(tmp_path: Path) -> None:
    first, ports = start_serve(tmp_path, "127.0.0.1:0")
    try:
        code, text = healthz(ports["metrics"])
        assert code == 200, text
        assert text.count(": SERVING: serving; durability aof") == 2 and "posting worker" in text
        assert "appendfsync always" in text and "maxmemory-policy noeviction" in text
        per_process = [int(p) for p in re.findall(r"/healthz on :(\d+)", text)]
        assert len(per_process) == 2 and all(healthz(p)[0] == 200 for p in per_process)
        spawned = children_of(first.pid)  # two gateway processes, the worker, the redis-server
        assert len(spawned) == 4, spawned
        os.kill(first.pid, signal.SIGKILL)  # no cleanup runs in the supervisor
        first.wait()
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(alive(p) for p in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in spawned if alive(p)]
        assert not left, f"processes of the killed supervisor still running: {left}"

    finally:
        if first.poll() is None:  # a failed assertion before the kill: stop it cleanly
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)

    second, again = start_serve(tmp_path, f"127.0.0.1:{ports['grpc']}")  # same port, same data folder
    try:
        assert again["grpc"] == ports["grpc"]
        result = demo(tmp_path, ports["grpc"])
        assert result.returncode == 0, result.stdout[-2000:]
        assert len(children_of(second.pid)) == 4
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
