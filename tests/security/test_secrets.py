"""Redis and secrets: the embedded redis-server has no open default user, each process has its own ACL
user with a generated password kept in mode 0600 files, nothing listens beyond loopback unless told,
and no password appears on a command line, on stdout or in a log line."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis, free_port
from adapters.secret_files import mask_url, mask_urls_in
from gateway import logs

CLI = [sys.executable, "-m", "gateway.cli"]


def test_the_embedded_redis_needs_a_password_and_gives_each_user_only_its_share(
    redis_server: EmbeddedRedis,
) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=redis_server.port).ping()  # the default user is disabled
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(f"redis://gateway:wrong@127.0.0.1:{redis_server.port}/0").ping()
    gateway = redis.Redis.from_url(redis_server.url_for("gateway"))
    gateway.set("ms:probe", "1")  # its keyspace: yes
    for command in (
        ("FLUSHALL",),
        ("CONFIG", "SET", "dir", "/tmp"),
        ("SET", "elsewhere", "1"),
        ("SHUTDOWN",),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            gateway.execute_command(*command)
    admin = redis.Redis.from_url(redis_server.url)
    assert admin.config_get("bind")["bind"] == "127.0.0.1"


def test_passwords_live_in_private_files_never_on_a_command_line(redis_server: EmbeddedRedis) -> None:
    assert redis_server.process is not None
    cmdline = Path(f"/proc/{redis_server.process.pid}/cmdline").read_bytes()
    conf = (redis_server.dir / "redis.conf").read_text()
    for user, password in redis_server.passwords.items():
        assert password.encode() not in cmdline
        assert password not in conf, "the config file holds hashes only"
        for path in (redis_server.secrets_dir / f"redis-{user}.password", redis_server.url_file(user)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(redis_server.secrets_dir.stat().st_mode) == 0o700


def test_urls_are_masked_before_anything_prints_them() -> None:
    assert mask_url("redis://gateway:s3cret@host:6379/0") == "redis://gateway:***@host:6379/0"
    assert mask_url("rediss://host:6380/0") == "rediss://host:6380/0"
    line = logs.JsonFormatter().format(
        logs.logging.makeLogRecord({"msg": "cannot reach postgresql://medsettle:hunter2@db/medsettle"})
    )
    assert "hunter2" not in line and "medsettle:***@db" in line
    assert "hunter2" not in mask_urls_in("x redis://u:hunter2@h:1/0 y")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def listening(port: int) -> list[str]:
    """Local addresses listening on `port` (IPv4 and IPv6), from /proc/net."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, and ::ffff:127.0.0.1


def listening_soon(port: int, timeout_s: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while not (found := listening(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def free_pair() -> int:
    """A port whose successor is free too (serve gives its worker the metrics port + 1)."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def test_serve_keeps_passwords_out_of_argv_and_stdout_and_binds_loopback(tmp_path: Path) -> None:
    metrics_port = free_pair()  # the embedded worker's metrics take the next one
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--metrics-port", str(metrics_port), "--workers", "1", "--log-level", "INFO"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    printed = []
    for line in proc.stdout:
        printed.append(line)
        if "serving" in line:
            break
    try:
        text = "".join(printed)
        passwords = [p.read_text().strip() for p in (tmp_path / "secrets").glob("*.password")]
        assert len(passwords) == 3
        procs = [proc.pid, *children_of(proc.pid)]
        assert len(procs) >= 4  # serve, redis-server, one gateway process, the worker
        for pid in procs:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            for password in passwords:
                assert password.encode() not in argv, argv
        for password in passwords:
            assert password not in text
        grpc_port = int(re.search(r"listening on 127.0.0.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        assert "gRPC over mTLS" in text
        for port in (grpc_port, metrics_port, metrics_port + 1):  # gRPC, gateway metrics, worker metrics
            found = listening_soon(port)
            assert found and set(found) <= LOOPBACK, (port, found)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    for password in passwords:
        assert password not in err


def test_the_worker_metrics_listen_where_the_flag_says(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    env = {**os.environ, "MEDSETTLE_REDIS_URL": redis_server.url_for("worker")}
    proc = subprocess.Popen(
        [*CLI, "worker", "--ledger", f"sqlite:///{tmp_path / 'l.db'}", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert redis_server.passwords["worker"] not in "".join(lines)
        assert "***@" in lines[0]
        port = int(re.search(r"metrics on http://127.0.0.1:(\d+)", lines[1]).group(1))  # type: ignore[union-attr]
        found = listening_soon(port)
        assert found and set(found) <= LOOPBACK
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_a_password_on_the_command_line_is_warned_about(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "policies").mkdir(parents=True)
    result = subprocess.run(
        [*CLI, "load", "--redis", redis_server.url, "--persons", str(tmp_path / "none.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "holds a password, visible to every user" in result.stderr
    assert redis_server.passwords["admin"] not in result.stderr + result.stdout
