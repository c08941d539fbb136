"""`medsettle dev-cluster`: starts a real cluster (or Sentinel setup) that outlives the command, serves
the ACL users' URLs from files, says whether it runs, and stops it leaving no redis-server behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.embedded_redis import running_redis
from adapters.redis_topology import sync_client
from adapters.secret_files import read_secret

CLI = [sys.executable, "-m", "gateway.cli", "dev-cluster"]


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_start_status_stop(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "dev"
    started = subprocess.run(
        [*CLI, "start", "--dir", str(folder), "--kind", kind], capture_output=True, text=True
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"redis+{kind}://127.0.0.1:" in started.stdout
        url_file = folder / "secrets" / f"redis-{kind}-gateway.url"
        assert url_file.stat().st_mode & 0o077 == 0, "the URL holds a password: owner only"
        client = sync_client(read_secret(url_file), socket_timeout=5)
        client.set("ms:{p001}:dev", "1")
        assert client.get("ms:{p001}:dev") == b"1"
        client.close()
        status = subprocess.run([*CLI, "status", "--dir", str(folder)], capture_output=True, text=True)
        processes = 6 if kind == "cluster" else 5  # 3 masters + 3 replicas; a master, a replica, 3 sentinels
        assert status.returncode == 0 and f"{processes} of {processes} running" in status.stdout, (
            status.stdout
        )
    finally:
        stopped = subprocess.run([*CLI, "stop", "--dir", str(folder)], capture_output=True, text=True)
    assert stopped.returncode == 0
    assert all(running_redis(p) is None for p in folder.glob("*/*/redis.pid")), "every server stopped"
    status = subprocess.run([*CLI, "status", "--dir", str(folder)], capture_output=True, text=True)
    assert status.returncode == 1
