"""The `medsettle` command: serve, load, demo, split."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rules_cache.reader import DataError


def cmd_split(args: argparse.Namespace) -> int:
    from gateway.case_files import outcome_json, run_case
    from gateway.split_table import render

    status = 0
    for case in args.cases:
        try:
            outcome = run_case(Path(case))
        except DataError as exc:
            print(f"medsettle split: {exc}", file=sys.stderr)
            status = 2
            continue
        if args.table:
            print(render(outcome, f"{case}:"), end="\n\n")
        else:
            print(
                json.dumps(outcome_json(outcome, with_trace=not args.no_trace), ensure_ascii=False, indent=2)
            )
    return status


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT. A plain handler, not loop.add_signal_handler: gRPC's poller can
    leave asyncio's wakeup fd unread, and the stop request was then lost. Python runs this handler in the
    main thread within a second (a periodic task wakes the loop), and it wakes the loop itself."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    return stop


async def gateway_process(args: argparse.Namespace) -> int:
    """One gateway process of `serve`: its own event loop, Redis pool and in-process caches, sharing the
    port with its siblings through SO_REUSEPORT."""
    from gateway.config import Config
    from gateway.server import Gateway

    config = Config(listen=args.listen, redis_url=args.redis, ledger_dsn=args.ledger)
    stop = stop_event()
    gateway = await Gateway(config, args.redis).start()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
    return 0


async def serve(args: argparse.Namespace) -> int:
    """Supervisor: the embedded Redis (unless --redis), the demo data, N gateway processes started before
    any gRPC object exists here, the posting worker (embedded mode), metrics across all of them."""
    from adapters.embedded_redis import EmbeddedRedis, free_port
    from gateway.config import Config
    from gateway.data_loading import load_citydata_dir
    from gateway.server import redis_client
    from telemetry.metrics import serve_metrics

    data_dir = Path(args.data_dir)
    ledger_dsn = args.ledger or f"sqlite:///{(data_dir / 'ledger.db').resolve()}"
    config = Config(listen=args.listen, redis_url=args.redis, data_dir=data_dir, ledger_dsn=ledger_dsn)
    host, _, port_text = config.listen.rpartition(":")
    port = int(port_text) or free_port()  # one port for every process, chosen here
    workers = max(1, args.workers or os.cpu_count() or 1)
    metrics_dir = (data_dir / "metrics").resolve()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before any process counts anything
    os.environ["MEDSETTLE_AUDIT_LOG"] = str((data_dir / "audit.log").resolve())
    embedded = None
    if config.redis_url is None:
        embedded = EmbeddedRedis(config.data_dir).start()
        redis_url = embedded.url
        print(f"medsettle: embedded redis-server on {redis_url} (AOF in {embedded.dir})", flush=True)
    else:
        redis_url = config.redis_url
    stop = stop_event()
    children: list[subprocess.Popen[bytes]] = []
    posting: subprocess.Popen[bytes] | None = None
    level = args.log_level or ("WARNING" if args.demo else "INFO")

    def spawn() -> subprocess.Popen[bytes]:
        cmd = ["gateway-process", "--listen", f"{host}:{port}", "--redis", redis_url, "--ledger", ledger_dsn]
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *cmd, "--log-level", level])

    try:
        if embedded is not None and not args.no_demo_data:
            client = redis_client(redis_url, config)
            report = await load_citydata_dir(client, config.citydata)
            await client.aclose()
            print(
                f"medsettle: loaded demo data: {len(report.versions)} versions, {report.persons} persons",
                flush=True,
            )
        children = [spawn() for _ in range(workers)]
        if not await wait_serving(f"{host}:{port}", children):
            print("medsettle: the gateway processes did not become ready", flush=True)
            return 1
        print(
            f"medsettle: listening on {host}:{port} (gRPC, health, reflection), {workers} processes",
            flush=True,
        )
        if args.metrics_port >= 0:

            def health() -> tuple[bool, str]:
                alive = sum(child.poll() is None for child in children)
                return alive == len(children), f"{alive} of {len(children)} gateway processes running"

            http = serve_metrics(args.metrics_port, health, host)
            print(f"medsettle: metrics on http://{host}:{http.server_port}/metrics", flush=True)
        if embedded is not None and not args.no_worker:
            worker_metrics = str(args.metrics_port + 1 if args.metrics_port > 0 else args.metrics_port)
            worker_args = [
                "worker",
                "--redis",
                redis_url,
                "--ledger",
                ledger_dsn,
                "--metrics-port",
                worker_metrics,
            ]
            # the worker serves its own metrics: it must not aggregate the gateway processes' files too,
            # or Prometheus would count every settlement twice
            own_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            posting = subprocess.Popen([sys.executable, "-m", "gateway.cli", *worker_args], env=own_env)
            print(f"medsettle: posting worker started (pid {posting.pid}), ledger {ledger_dsn}", flush=True)
        status = 0
        if args.demo:
            from gateway.demo import DEMO_CARD, LOST_CARD, run_demo

            status = await run_demo(f"{host}:{port}", DEMO_CARD, LOST_CARD)
            if posting is not None:
                status = status or await show_posted(ledger_dsn, config.timezone)
            if args.exit_after_demo:
                return status
        print("medsettle: serving; Ctrl-C or SIGTERM to stop", flush=True)
        while not stop.is_set():  # supervise: a gateway process that died is started again
            for i, child in enumerate(children):
                if child.poll() is not None:
                    print(
                        f"medsettle: gateway process {child.pid} exited ({child.returncode}); restarting",
                        flush=True,
                    )
                    children[i] = spawn()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        print("medsettle: stopping", flush=True)
        return status
    finally:
        for proc in [*children, *([posting] if posting else [])]:
            if proc.poll() is None:
                proc.terminate()  # each finishes what it has in hand, then exits
        for proc in [*children, *([posting] if posting else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if embedded is not None:
            embedded.stop()


async def wait_serving(target: str, children: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while asyncio.get_running_loop().time() < deadline:
            if any(child.poll() is not None for child in children):
                return False
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.1)
    return False


async def show_posted(ledger_dsn: str, timezone: str) -> int:
    """After the demo: wait for the posting worker to book the day's settlements, print the statement."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from adapters.ledger.store import Ledger, LedgerUnavailable
    from gateway.posting.statements import institution_statements

    month = datetime.now(ZoneInfo(timezone)).strftime("%Y-%m")
    ledger = Ledger(ledger_dsn)
    for _ in range(100):
        try:
            rows = await asyncio.to_thread(institution_statements, ledger, month)
            if any(r.institution == "P50010300001" for r in rows):
                print("== posted to the ledger: monthly institution statement")
                print(render_statement("institutions", month, rows))
                return 0
        except LedgerUnavailable:
            pass  # the worker has not created the ledger yet
        await asyncio.sleep(0.1)
    print("== FAILED: the demo's settlements did not reach the ledger within 10 s")
    return 1


async def load(args: argparse.Namespace) -> int:
    from gateway.config import Config
    from gateway.data_loading import load_citydata_dir, load_files
    from gateway.server import redis_client

    client = redis_client(args.redis, Config())
    try:
        if args.dir:
            report = await load_citydata_dir(client, Path(args.dir))
        else:
            catalogs = {}
            for item in args.catalog or []:
                region, _, path = item.partition("=")
                catalogs[region] = Path(path)
            report = await load_files(
                client,
                policies=[Path(p) for p in args.policy or []],
                catalogs=catalogs,
                institutions=Path(args.institutions) if args.institutions else None,
                persons=Path(args.persons) if args.persons else None,
            )
    finally:
        await client.aclose()
    for name, version in sorted(report.versions.items()):
        print(f"published {name} = {version}")
    print(f"persons written: {report.persons}")
    return 0


async def demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return await run_demo(args.target, args.card, args.lost_card)


async def health(args: argparse.Namespace) -> int:
    """For load balancers and the Docker HEALTHCHECK: exit 0 only when the gateway reports SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(args.target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_ms / 1000
            )
        except grpc.aio.AioRpcError as exc:
            print(f"{args.target}: {exc.code().name}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def worker(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    import redis

    from adapters.ledger.store import Ledger
    from gateway.posting.budgets import load_budgets
    from gateway.posting.worker import PostingWorker, WorkerConfig
    from telemetry.metrics import serve_metrics

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    config = WorkerConfig(batch_max=args.batch_max, claim_idle_ms=args.claim_idle_ms)
    if args.consumer:
        config = dataclasses.replace(config, consumer=args.consumer)
    posting = PostingWorker(redis.Redis.from_url(args.redis, socket_timeout=5), Ledger(args.ledger), config)
    if args.budgets:
        posting.budgets = load_budgets(Path(args.budgets))
    print(f"medsettle worker {config.consumer}: {args.redis} -> {args.ledger}", flush=True)
    if args.metrics_port >= 0:
        http = serve_metrics(args.metrics_port, posting.health)
        print(f"medsettle worker: metrics on http://0.0.0.0:{http.server_port}/metrics", flush=True)
    posting.run(stop)
    s = posting.stats
    print(
        f"medsettle worker: stopped; booked {s.booked}, again {s.duplicates}, dead letters {s.dead_lettered}"
    )
    return 0


def statement(args: argparse.Namespace) -> int:
    import csv
    import dataclasses

    from adapters.ledger.store import Ledger
    from gateway.posting import statements

    ledger = Ledger(args.ledger)
    rows: list[Any]
    if args.kind == "institutions":
        rows = statements.institution_statements(ledger, args.month, args.institution)
    elif args.kind == "clearing":
        rows = statements.clearing_matrix(ledger, args.month)
    else:
        rows = statements.fund_spend(ledger, args.month)
    records = [dataclasses.asdict(r) for r in rows]
    if args.csv:
        out = csv.writer(sys.stdout)
        if records:
            out.writerow(records[0].keys())
        for rec in records:
            out.writerow(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in rec.values())
    else:
        print(render_statement(args.kind, args.month, rows))
    return 0


def render_statement(kind: str, month: str, rows: list[Any]) -> str:
    from gateway.engine.money import yuan

    lines = [f"{kind} statement, {month} (yuan)"]
    for r in rows:
        if kind == "institutions":
            funds = "  ".join(f"{code} {yuan(v)}" for code, v in sorted(r.funds.items()))
            lines.append(
                f"  {r.institution}  count {r.settlements:>5}  total {yuan(r.total_fen):>12}  funds"
                f" {yuan(r.fund_total_fen):>12}  account {yuan(r.account_fen):>10}"
                f"  cash {yuan(r.cash_fen):>10}"
                f"  [{funds}]"
            )
        elif kind == "clearing":
            lines.append(f"  {r.debtor:<16} owes {r.creditor:<16} {yuan(r.amount_fen):>12}")
        else:
            lines.append(f"  {r.region}/{r.district:<8} fund {r.fund_code}  {yuan(r.amount_fen):>12}")
    if not rows:
        lines.append("  (nothing booked)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsettle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (embedded redis-server and demo data by default)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0: any free port)")
    p.add_argument(
        "--redis", default=None, help="redis://host:port/db; omit to start an embedded redis-server"
    )
    p.add_argument("--data-dir", default="medsettle-data", help="where the embedded redis keeps its AOF")
    p.add_argument("--no-demo-data", action="store_true", help="embedded mode: do not load citydata/")
    p.add_argument("--demo", action="store_true", help="run the demo client against this server once ready")
    p.add_argument(
        "--exit-after-demo", action="store_true", help="with --demo: stop after it, exit with its status"
    )
    p.add_argument("--no-worker", action="store_true", help="embedded mode: do not start the posting worker")
    p.add_argument(
        "--workers", type=int, default=0, help="gateway processes sharing the port (default: cores)"
    )
    p.add_argument(
        "--log-level", help="INFO (default; WARNING with --demo): one JSON line per request on stderr"
    )
    p.add_argument(
        "--metrics-port", type=int, default=9464, help="/metrics and /healthz; 0 any free port, -1 off"
    )
    p.add_argument(
        "--ledger",
        help="ledger DSN for reconciliation, statements and the embedded worker"
        " (default: sqlite in --data-dir)",
    )
    p.set_defaults(func=lambda a: asyncio.run(serve(a)))

    p = sub.add_parser("gateway-process", help=argparse.SUPPRESS)  # one of serve's processes
    p.add_argument("--listen", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--ledger")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=lambda a: asyncio.run(gateway_process(a)))

    p = sub.add_parser("load", help="validate and publish policies, catalogs, institutions and persons")
    p.add_argument("--redis", required=True)
    p.add_argument(
        "--dir", help="a whole citydata folder (policies/, catalogs/, institutions.csv, persons.json)"
    )
    p.add_argument("--policy", action="append", help="a policy TOML file (repeatable)")
    p.add_argument("--catalog", action="append", metavar="REGION=FILE.csv", help="a catalog (repeatable)")
    p.add_argument("--institutions", help="institutions CSV")
    p.add_argument("--persons", help="persons JSON (new persons, or updates of existing ones)")
    p.set_defaults(func=lambda a: asyncio.run(load(a)))

    p = sub.add_parser("demo", help="swipe demo cards against a running gateway and check every step")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--card", default="Y53736293")
    p.add_argument("--lost-card", default="Q45301612")
    p.set_defaults(func=lambda a: asyncio.run(demo(a)))

    p = sub.add_parser("worker", help="book committed settlements into the ledger, exactly once")
    p.add_argument("--redis", required=True)
    p.add_argument("--ledger", required=True, help="sqlite:///path/ledger.db or postgresql://...")
    p.add_argument("--consumer", help="consumer name in the posting group (default: <host>-posting)")
    p.add_argument("--batch-max", type=int, default=500, help="entries per database transaction")
    p.add_argument("--claim-idle-ms", type=int, default=30_000, help="reclaim entries pending this long")
    p.add_argument(
        "--metrics-port", type=int, default=9465, help="/metrics and /healthz; 0 any free port, -1 off"
    )
    p.add_argument("--budgets", help="monthly fund budgets (TOML) to export beside the spend")
    p.set_defaults(func=worker)

    p = sub.add_parser("statement", help="institution statements, clearing matrix or fund spend for a month")
    p.add_argument("kind", choices=["institutions", "clearing", "funds"])
    p.add_argument("--ledger", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--institution")
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=statement)

    p = sub.add_parser("health", help="ask a gateway's gRPC health service; exit 0 only when SERVING")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="a service name; empty: the whole server")
    p.add_argument("--timeout-ms", type=int, default=2000)
    p.set_defaults(func=lambda a: asyncio.run(health(a)))

    p = sub.add_parser("split", help="split one or more self-contained cases offline and print JSON")
    p.add_argument("cases", nargs="+", metavar="CASE.json")
    p.add_argument("--no-trace", action="store_true", help="leave the rule trace out")
    p.add_argument("--table", action="store_true", help="print readable tables instead of JSON")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import logs

    audit = Path(args.data_dir) / "audit.log" if args.command == "serve" else None
    if args.command == "gateway-process":  # the audit log of the serve it belongs to
        audit = Path(os.environ.get("MEDSETTLE_AUDIT_LOG", "medsettle-data/audit.log"))
    level = getattr(args, "log_level", None) or ("WARNING" if getattr(args, "demo", False) else "INFO")
    logs.configure(level if args.command in ("serve", "gateway-process") else "WARNING", audit)
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"medsettle {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
