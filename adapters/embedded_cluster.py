"""Real local Redis deployments beyond one node, for development, tests and CI, from the redis-server the
project already finds (adapters/embedded_redis.py), each node with the same ACL users and passwords
(one secrets folder) and AOF on:

    EmbeddedCluster   Redis Cluster: `primaries` masters (16384 slots split evenly), each with
                      `replicas_each` replicas, on loopback ports; cluster-node-timeout is short
                      (NODE_TIMEOUT_MS) so a killed master's replica takes over in about two seconds
    EmbeddedSentinel  one master, its replicas and `sentinels` Sentinel processes (quorum: a majority)

Both can outlive the process that started them (`outlive_parent`, for `medsettle dev-cluster start`);
`stop_folder` stops such a deployment from its pidfiles."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from adapters.embedded_redis import DIE_WITH_PARENT, EmbeddedRedis, cluster_server_binary, running_redis
from adapters.secret_files import write_private

SLOTS = 16384
NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failing; its replica is elected soon after
FORM_TIMEOUT_S = 30.0  # from the last node started to every node saying cluster_state:ok
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10_000
MASTER_NAME = "medsettle"
# what a serving process may ask a sentinel: where the master is, and be told when it moves
SENTINEL_CLIENT_RULES = (
    "&* -@all +ping +hello +auth +client +subscribe +psubscribe +unsubscribe +punsubscribe"
    " +sentinel|get-master-addr-by-name +sentinel|sentinels +sentinel|replicas +sentinel|slaves"
    " +sentinel|master +sentinel|masters"
)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def free_ports(n: int) -> list[int]:
    """n free loopback ports, held open together so none is handed out twice."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def admin(node: EmbeddedRedis, timeout_s: float = 2.0) -> redis.Redis:
    return redis.Redis(
        port=node.port,
        username="admin",
        password=node.passwords["admin"],
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


class EmbeddedCluster:
    def __init__(
        self,
        data_dir: Path,
        primaries: int = 3,
        replicas_each: int = 1,
        appendfsync: str = "always",
        outlive_parent: bool = False,
    ) -> None:
        if primaries < 1 or replicas_each < 0:
            raise ValueError("a cluster has at least one primary and no negative number of replicas")
        self.data_dir = data_dir
        count = primaries * (1 + replicas_each)
        ports = free_ports(2 * count)
        self.nodes = [
            EmbeddedRedis(
                data_dir,
                port=ports[i],
                appendfsync=appendfsync,
                folder=f"cluster/node{i}",
                extra_config=(
                    "cluster-enabled yes",
                    f"cluster-port {ports[count + i]}",
                    f'cluster-config-file "{(data_dir / "cluster" / f"node{i}" / "nodes.conf").resolve()}"',
                    f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                    # the other shards go on serving while one is failing over
                    "cluster-require-full-coverage no",
                ),
                auth_to_primary=True,
                write_urls=False,
                outlive_parent=outlive_parent,
            )
            for i in range(count)
        ]
        self.bus_ports = ports[count:]
        self.primaries = primaries
        self.replicas_each = replicas_each

    # ---------------------------------------------------------------- URLs

    @property
    def passwords(self) -> dict[str, str]:
        return self.nodes[0].passwords

    def url_for(self, user: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://{user}:{self.passwords[user]}@{hosts}"

    @property
    def url(self) -> str:
        return self.url_for("admin")

    @property
    def public_url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])

    # ---------------------------------------------------------------- life

    def start(self) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        for user in ("gateway", "worker", "admin"):
            write_private(
                self.data_dir / "secrets" / f"redis-cluster-{user}.url", self.url_for(user).encode()
            )
        return self

    def _form(self) -> None:
        masters, replicas = self.nodes[: self.primaries], self.nodes[self.primaries :]
        clients = [admin(n) for n in self.nodes]
        try:
            if clients[0].execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0:  # type: ignore[no-untyped-call]
                return  # restarted from its nodes.conf: already formed
            per = SLOTS // self.primaries
            for i, c in enumerate(clients[: self.primaries]):
                last = SLOTS - 1 if i == self.primaries - 1 else (i + 1) * per - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)  # type: ignore[no-untyped-call]
            for n, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, bus)  # type: ignore[no-untyped-call]
            wait_for(
                lambda: all(known(c) == len(self.nodes) for c in clients),
                FORM_TIMEOUT_S,
                "every node to meet",
            )
            ids = [text(c.execute_command("CLUSTER", "MYID")) for c in clients]  # type: ignore[no-untyped-call]
            for j, c in enumerate(clients[self.primaries :]):
                c.execute_command("CLUSTER", "REPLICATE", ids[j % self.primaries])  # type: ignore[no-untyped-call]
            wait_for(lambda: all(cluster_ok(c) for c in clients), FORM_TIMEOUT_S, "cluster_state:ok")
            if replicas:
                wait_for(
                    lambda: all(online_replicas(c) >= self.replicas_each for c in clients[: len(masters)]),
                    FORM_TIMEOUT_S,
                    "every replica to sync",
                )
        finally:
            for c in clients:
                c.close()

    def wait_replicas(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """Until every master has its replicas online again (a killed node restarted rejoins as one)."""

        def synced() -> bool:
            for node in self.nodes:
                if node.process is None:
                    continue
                with admin(node) as c:
                    if replication(c)["role"] == "master" and online_replicas(c) < self.replicas_each:
                        return False
            return True

        wait_for(synced, timeout_s, "every master's replicas to be online")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults

    def node_serving(self, key: str) -> EmbeddedRedis:
        """The master that holds `key`'s slot now."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with admin(node) as c:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError("no live node answers")

    def replica_of(self, master: EmbeddedRedis) -> EmbeddedRedis:
        """A live replica of `master` (the one its failover will promote)."""
        for node in self.nodes:
            if node is master or node.process is None:
                continue
            with admin(node) as c:
                info = replication(c)
                if info["role"] == "slave" and int(info["master_port"]) == master.port:
                    return node
        raise RuntimeError(f"no replica of port {master.port}")

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL: no AOF flush, no goodbye; what a crashed machine does."""
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def wait_takeover(self, key: str, old: EmbeddedRedis, timeout_s: float = 30.0) -> EmbeddedRedis:
        """Until another node serves `key`'s slot as master, and accepts writes there."""
        found: list[EmbeddedRedis] = []

        def moved() -> bool:
            node = self.node_serving(key)
            if node is old:
                return False
            with admin(node) as c:
                if not cluster_ok(c):
                    return False
            found.append(node)
            return True

        wait_for(moved, timeout_s, f"a replica to take over from port {old.port}")
        return found[-1]


def pause(node: EmbeddedRedis) -> None:
    """SIGSTOP: a replica that stops keeping up (a stalled disk, a congested link)."""
    if node.process is not None:
        os.kill(node.process.pid, signal.SIGSTOP)


def cut_replicas(master: EmbeddedRedis) -> None:
    """The master drops its replicas' links (CLIENT KILL TYPE replica): what it writes from now on reaches
    no replica until one reconnects (a paused one cannot)."""
    with admin(master) as c:
        c.execute_command("CLIENT", "KILL", "TYPE", "replica")


def resume(node: EmbeddedRedis) -> None:
    if node.process is not None:
        os.kill(node.process.pid, signal.SIGCONT)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cluster_info(c: redis.Redis) -> dict[str, str]:
    raw = text(c.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
    return dict(line.split(":", 1) for line in raw.split() if ":" in line)


def known(c: redis.Redis) -> int:
    return int(cluster_info(c).get("cluster_known_nodes", "0"))


def cluster_ok(c: redis.Redis) -> bool:
    return cluster_info(c).get("cluster_state") == "ok"


def replication(c: redis.Redis) -> dict[str, Any]:
    return dict(c.info("replication"))


def online_replicas(c: redis.Redis) -> int:
    """Replicas done with their initial sync (connected_slaves counts one still loading it)."""
    info = replication(c)
    return sum(
        1
        for k, v in info.items()
        if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    )


class EmbeddedSentinel:
    """One master, `replicas` replicas and `sentinels` Sentinels watching it as MASTER_NAME."""

    def __init__(
        self, data_dir: Path, replicas: int = 1, sentinels: int = 3, appendfsync: str = "always",
        outlive_parent: bool = False,
    ) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.master = EmbeddedRedis(
            data_dir, appendfsync=appendfsync, folder="sentinel/master", auth_to_primary=True,
            write_urls=False, outlive_parent=outlive_parent,
        )  # fmt: skip
        self.replicas = [
            EmbeddedRedis(
                data_dir,
                appendfsync=appendfsync,
                folder=f"sentinel/replica{i}",
                replica_of=self.master,
                auth_to_primary=True,
                outlive_parent=outlive_parent,
            )
            for i in range(replicas)
        ]
        self.sentinel_ports = free_ports(sentinels)
        self.outlive_parent = outlive_parent
        self.sentinel_processes: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[EmbeddedRedis]:
        return [self.master, *self.replicas]

    @property
    def passwords(self) -> dict[str, str]:
        return self.master.passwords

    def url_for(self, user: str) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{user}:{self.passwords[user]}@{hosts}/{MASTER_NAME}"

    @property
    def url(self) -> str:
        return self.url_for("admin")

    @property
    def public_url(self) -> str:
        return (
            "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{MASTER_NAME}"
        )

    def _sentinel_config(self, i: int) -> Path:
        folder = (self.data_dir / "sentinel" / f"sentinel{i}").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        pw = self.passwords["admin"]
        digest = hashlib.sha256(pw.encode()).hexdigest()
        users = [
            f"user {u} reset on #{sha256_hex(self.passwords[u])} {SENTINEL_CLIENT_RULES}"
            for u in ("gateway", "worker")
        ]
        quorum = len(self.sentinel_ports) // 2 + 1
        lines = [
            f"port {self.sentinel_ports[i]}", "bind 127.0.0.1", f'dir "{folder}"', "daemonize no",
            f'logfile "{folder / "sentinel.log"}"', f'pidfile "{folder / "redis.pid"}"',
            "user default off resetpass nocommands",
            f"user admin reset on #{digest} ~* &* +@all", *users,
            # the sentinels' own users; they reach each other and the data nodes as admin
            "sentinel sentinel-user admin", f"sentinel sentinel-pass {pw}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {quorum}",
            f"sentinel auth-user {MASTER_NAME} admin", f"sentinel auth-pass {MASTER_NAME} {pw}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}",
        ]  # fmt: skip
        path = folder / "sentinel.conf"
        write_private(path, ("\n".join(lines) + "\n").encode())
        return path

    def start(self) -> EmbeddedSentinel:
        try:
            self.master.start()
            for r in self.replicas:
                r.start()
            with admin(self.master) as c:
                wait_for(
                    lambda: online_replicas(c) >= len(self.replicas), FORM_TIMEOUT_S,
                    "the replicas to sync",
                )  # fmt: skip
            for i in range(len(self.sentinel_ports)):
                config = self._sentinel_config(i)
                command = [cluster_server_binary(), str(config), "--sentinel"]
                if not self.outlive_parent:  # dies with this process, as every embedded server does
                    command = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *command]
                self.sentinel_processes.append(
                    subprocess.Popen(
                        command,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=self.outlive_parent,
                    )
                )
            wait_for(self._sentinels_agree, FORM_TIMEOUT_S, "every sentinel to see the master and each other")
        except BaseException:
            self.stop()
            raise
        for user in ("gateway", "worker", "admin"):
            write_private(
                self.data_dir / "secrets" / f"redis-sentinel-{user}.url", self.url_for(user).encode()
            )
        return self

    def sentinel(self, i: int) -> redis.Redis:
        return redis.Redis(
            port=self.sentinel_ports[i], username="admin", password=self.passwords["admin"],
            socket_timeout=2, socket_connect_timeout=2,
        )  # fmt: skip

    def _sentinels_agree(self) -> bool:
        others = len(self.sentinel_ports) - 1
        for i in range(len(self.sentinel_ports)):
            with self.sentinel(i) as s:
                state = s.execute_command("SENTINEL", "MASTER", MASTER_NAME)
                fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
                fields = {text(k): text(v) for k, v in fields.items()}
                if int(fields.get("num-other-sentinels", 0)) < others:
                    return False
                if int(fields.get("num-slaves", 0)) < len(self.replicas):
                    return False
        return True

    def current_master_port(self) -> int:
        with self.sentinel(0) as s:
            _, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            return int(port)

    def kill_master(self) -> EmbeddedRedis:
        port = self.current_master_port()
        node = next(n for n in self.servers if n.port == port)
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None
        return node

    def wait_takeover(self, old: EmbeddedRedis, timeout_s: float = 30.0) -> EmbeddedRedis:
        found: list[EmbeddedRedis] = []

        def promoted() -> bool:
            port = self.current_master_port()
            if port == old.port:
                return False
            node = next(n for n in self.servers if n.port == port)
            with admin(node) as c:
                if replication(c)["role"] != "master":
                    return False
            found.append(node)
            return True

        wait_for(promoted, timeout_s, f"a replica to take over from port {old.port}")
        return found[-1]

    def wait_replicas(self, timeout_s: float = FORM_TIMEOUT_S) -> None:
        """Until the current master has every replica online (a killed master restarted is made one)."""
        port = self.current_master_port()
        master = next(n for n in self.servers if n.port == port)
        with admin(master) as c:
            wait_for(lambda: online_replicas(c) >= len(self.replicas), timeout_s, "the replicas to sync")

    def stop(self) -> None:
        for p in self.sentinel_processes:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.sentinel_processes = []
        for node in reversed(self.servers):
            node.stop()

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_folder(data_dir: Path) -> list[int]:
    """Stop every redis-server (nodes and sentinels) started under data_dir by `dev-cluster start`,
    found by their pidfiles (a pid is signalled only while its command line is a redis-server)."""
    stopped = []
    for pidfile in sorted(data_dir.glob("*/*/redis.pid")):
        pid = running_redis(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    deadline = time.monotonic() + 10
    for pidfile in sorted(data_dir.glob("*/*/redis.pid")):
        while running_redis(pidfile) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    return stopped
