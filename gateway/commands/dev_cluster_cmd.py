"""`medsettle dev-cluster start|stop|status`: a real local Redis Cluster (three masters, a replica each)
or a Sentinel deployment (a master, a replica, three sentinels) on loopback ports, for development and
CI, from the redis-server 7 the project finds (adapters/embedded_cluster.py). The servers outlive the
command; `stop` ends them by their pidfiles. The URLs (with the ACL users' passwords) are written, mode
0600, to <dir>/secrets/redis-cluster-<user>.url (or redis-sentinel-<user>.url): point --redis-file at
one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_DIR = "medsettle-dev-cluster"


def register(sub: Any) -> None:
    p = sub.add_parser("dev-cluster", help="start, stop or inspect a local Redis Cluster or Sentinel setup")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--dir", default=DEFAULT_DIR, help="where the nodes keep their data and pidfiles")
    p.add_argument("--kind", choices=("cluster", "sentinel"), default="cluster")
    p.add_argument("--primaries", type=int, default=3, help="cluster: masters")
    p.add_argument("--replicas", type=int, default=1, help="replicas of each master")
    p.set_defaults(func=dev_cluster_cmd)


def dev_cluster_cmd(args: argparse.Namespace) -> int:
    from adapters.embedded_cluster import EmbeddedCluster, EmbeddedSentinel, stop_folder
    from adapters.embedded_redis import running_redis

    folder = Path(args.dir).resolve()
    state = folder / "dev-cluster.json"
    if args.action == "stop":
        stopped = stop_folder(folder)
        state.unlink(missing_ok=True)
        print(f"medsettle dev-cluster: stopped {len(stopped)} redis-server process(es) in {folder}")
        return 0
    if args.action == "status":
        if not state.exists():
            print(f"medsettle dev-cluster: nothing started in {folder}")
            return 1
        info = json.loads(state.read_text())
        alive = [p for p in sorted(folder.glob("*/*/redis.pid")) if running_redis(p) is not None]
        running = f"{len(alive)} of {info['processes']} running"
        print(f"medsettle dev-cluster: {info['kind']} {info['url']}: {running}")
        return 0 if len(alive) == info["processes"] else 1
    if state.exists() and any(running_redis(p) is not None for p in folder.glob("*/*/redis.pid")):
        print(f"medsettle dev-cluster: already running in {folder} (stop it first)")
        return 1
    folder.mkdir(parents=True, exist_ok=True)
    if args.kind == "cluster":
        deployment: Any = EmbeddedCluster(folder, args.primaries, args.replicas, outlive_parent=True).start()
        processes = len(deployment.nodes)
    else:
        deployment = EmbeddedSentinel(folder, replicas=args.replicas, outlive_parent=True).start()
        processes = len(deployment.servers) + len(deployment.sentinel_ports)
    state.write_text(json.dumps({"kind": args.kind, "url": deployment.public_url, "processes": processes}))
    print(f"medsettle dev-cluster: {args.kind} on {deployment.public_url}")
    names = f"redis-{args.kind}-{{gateway,worker,admin}}.url"
    print(f"  URLs with credentials (mode 0600): {folder / 'secrets'}/{names}")
    print(f"  medsettle load --redis-file {folder / 'secrets'}/redis-{args.kind}-admin.url ...")
    return 0
