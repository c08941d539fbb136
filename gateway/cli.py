"""The `medsettle` command: serve, load, worker, deadletters, statement, demo, health, certs, split."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from rules_cache.reader import DataError

DEFAULT_DATA_DIR = "medsettle-data"
REDIS_ENV, LEDGER_ENV, CERTS_ENV = "MEDSETTLE_REDIS_URL", "MEDSETTLE_LEDGER_DSN", "MEDSETTLE_CERTS"


def secret_value(flag: str | None, file: str | None, env: str, what: str) -> str | None:
    """A URL or DSN that may hold a password: from a file (mode 0600) or the environment, which other
    users cannot read, or from argv (which every user of the machine can: `ps`), with a warning."""
    from adapters.secret_files import has_password, read_secret

    if file:
        return read_secret(Path(file))
    if flag:
        if has_password(flag):
            print(
                f"medsettle: warning: the {what} on the command line holds a password, visible to every user"
                f" of this machine; put it in ${env} or a file (--{what}-file)",
                file=sys.stderr,
            )
        return flag
    return os.environ.get(env) or None


def redis_url_of(args: argparse.Namespace) -> str | None:
    return secret_value(args.redis, getattr(args, "redis_file", None), REDIS_ENV, "redis")


def ledger_dsn_of(args: argparse.Namespace) -> str | None:
    return secret_value(args.ledger, getattr(args, "ledger_file", None), LEDGER_ENV, "ledger")


def client_host(host: str) -> str:
    """Where a local client connects for a listen address (a wildcard is reached on loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def certs_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "certs", None):
        return Path(args.certs)
    return Path(
        os.environ.get(CERTS_ENV) or Path(getattr(args, "data_dir", None) or DEFAULT_DATA_DIR) / "certs"
    )


def client_tls(args: argparse.Namespace, name: str) -> Any:
    """mTLS for a client command (health, demo): explicit files, or `name`'s certificate in the certs
    folder; None with --insecure (a plaintext gateway)."""
    from gateway.edge.tls import ClientTls

    if args.insecure:
        return None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise SystemExit("medsettle: --tls-cert, --tls-key and --tls-ca go together")
        return ClientTls(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key), args.server_name)
    base = ClientTls.for_institution(certs_dir(args), name)
    return ClientTls(base.ca, base.cert, base.key, args.server_name)


def server_tls(args: argparse.Namespace, host: str) -> tuple[Any, Any]:
    """The gateway's TLS files and the supervisor's probe certificate. Explicit --tls-* files, else the
    certs folder (default <data-dir>/certs), whose development PKI is created on first start."""
    from gateway.edge import certs
    from gateway.edge.tls import ClientTls, ServerTls

    if args.insecure:
        return None, None
    root = certs_dir(args)
    layout = certs.Layout(root)
    explicit = args.tls_cert or args.tls_key or args.tls_client_ca
    if explicit:
        if not (args.tls_cert and args.tls_key and args.tls_client_ca):
            raise SystemExit("medsettle: --tls-cert, --tls-key and --tls-client-ca go together")
        tls = ServerTls(
            Path(args.tls_cert), Path(args.tls_key), Path(args.tls_client_ca),
            Path(args.tls_crl) if args.tls_crl else None,
        )  # fmt: skip
    else:
        if not layout.ca_cert.exists():
            hosts = [h for h in [*(args.host or []), host] if client_host(h) != "127.0.0.1"]
            created = certs.ensure_pki(root, citydata_registry(), hosts)
            print(
                f"medsettle: created a development CA, a server certificate and {len(created) - 3}"
                f" institution certificates in {root} (terminals present clients/<institution>.crt;"
                " docs/SECURITY.md)",
                flush=True,
            )
        tls = ServerTls.from_dir(root)
    probe_cert = Path(args.probe_cert) if args.probe_cert else layout.probe_cert
    probe_key = Path(args.probe_key) if args.probe_key else layout.probe_key
    if not probe_cert.exists():
        raise SystemExit(
            f"medsettle: the readiness probe needs a client certificate: {probe_cert} (--probe-cert)"
        )
    probe_ca = Path(args.probe_ca) if args.probe_ca else tls.client_ca  # the CA of the server's certificate
    return tls, ClientTls(probe_ca, probe_cert, probe_key)


def limits_of(items: list[str] | None) -> Any:
    """--limit name=value (repeatable), names as in gateway/edge/limits.py EdgeLimits."""
    import dataclasses

    from gateway.edge.limits import EdgeLimits

    limits = EdgeLimits()
    known = {f.name: f.type for f in dataclasses.fields(EdgeLimits)}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in known or not value:
            raise SystemExit(f"medsettle: --limit {item}: known limits are {', '.join(sorted(known))}")
        number: Any = float(value) if "float" in str(known[name]) else int(value)
        limits = dataclasses.replace(limits, **{name: number})
    return limits


def tls_args(tls: Any) -> list[str]:
    """How the supervisor hands its TLS choice to a gateway process (paths only, no secret)."""
    if tls is None:
        return ["--insecure"]
    out = ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-client-ca", str(tls.client_ca)]
    return [*out, "--tls-crl", str(tls.crl)] if tls.crl else out


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
    port with its siblings through SO_REUSEPORT. The Redis URL and ledger DSN come in the environment."""
    from gateway.config import Config
    from gateway.edge.tls import ServerTls
    from gateway.ops.durability import StartupRefused
    from gateway.ops.lifeline import die_with_supervisor
    from gateway.ops.status import RUN_DIR_ENV, STATUS_EVERY_S, write_status
    from gateway.server import Gateway
    from telemetry.metrics import serve_metrics

    die_with_supervisor()  # first: a supervisor killed now must not leave this process serving
    redis_url = redis_url_of(args)
    if redis_url is None:
        raise SystemExit(f"medsettle gateway-process: no Redis URL (${REDIS_ENV} or --redis-file)")
    tls = None
    if not args.insecure:
        tls = ServerTls(
            Path(args.tls_cert), Path(args.tls_key), Path(args.tls_client_ca),
            Path(args.tls_crl) if args.tls_crl else None,
        )  # fmt: skip
    from gateway.index_key import resolve

    config = Config(
        listen=args.listen, redis_url=redis_url, ledger_dsn=ledger_dsn_of(args), tls=tls,
        limits=limits_of(args.limit), index_key=resolve(None, Path(DEFAULT_DATA_DIR), create=False),
        nhsa_listen=args.nhsa_listen,
        nhsa_keys_file=Path(args.nhsa_keys_file) if args.nhsa_keys_file else None,
    )  # fmt: skip
    stop = stop_event()
    try:
        gateway = await Gateway(config, redis_url, durability=durability_of(args)).start()
    except StartupRefused as exc:
        print(f"medsettle gateway-process: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    # What the process built to start (modules, protobuf descriptors, the static data) lives as long
    # as it does: moved out of the cycle collector's generations, a full collection no longer walks it
    # and no longer holds the event loop for tens of milliseconds.
    gc.freeze()
    # this process's own /healthz (loopback, any free port), and its verdict where the supervisor reads it
    http = serve_metrics(0, gateway.report, "127.0.0.1")
    run_dir = Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else None
    try:
        while not stop.is_set():
            if run_dir is not None:
                serving, reason = gateway.report()
                with contextlib.suppress(OSError):
                    write_status(run_dir, serving, reason, int(http.server_port))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=STATUS_EVERY_S)
    finally:
        await gateway.stop()
        if run_dir is not None:
            with contextlib.suppress(OSError):
                write_status(run_dir, False, "stopped", int(http.server_port))
        http.shutdown()
    return 0


def durability_of(args: argparse.Namespace) -> Any:
    from gateway.ops.durability import Durability

    try:
        return Durability(args.durability, args.replicas, args.replica_wait_ms)
    except ValueError as exc:
        raise SystemExit(f"medsettle: {exc}") from None


def durability_args(args: argparse.Namespace) -> list[str]:
    return [
        "--durability", args.durability, "--replicas", str(args.replicas),
        "--replica-wait-ms", str(args.replica_wait_ms),
    ]  # fmt: skip


def refuse_unfit_redis(url: str, durability: Any) -> str:
    """The supervisor's check before it starts anything: '' when Redis is fit to hold money (or does not
    answer yet: the gateway processes then report NOT_SERVING until it does), else why not."""
    import redis

    from adapters.redis_topology import sync_client
    from gateway.ops.durability import read_facts_sync

    client = sync_client(url, socket_timeout=2, socket_connect_timeout=2)  # one node, Sentinel or cluster
    try:
        return "; ".join(read_facts_sync(client).problems(durability))
    except redis.RedisError:
        return ""
    finally:
        client.close()


async def serve(args: argparse.Namespace) -> int:
    """Supervisor: the embedded Redis (unless a Redis URL is given), the demo data, N gateway processes
    started before any gRPC object exists here, the posting worker (embedded mode), metrics across all of
    them, and the audit log's rotation."""
    import redis

    from adapters.embedded_redis import EmbeddedRedis, free_port
    from adapters.secret_files import mask_url
    from gateway import logs
    from gateway.config import Config
    from gateway.data_loading import load_citydata_dir
    from gateway.ops.backlog import BacklogCollector, client_for
    from gateway.ops.durability import read_facts_sync
    from gateway.ops.lifeline import SUPERVISOR_ENV
    from gateway.ops.status import RUN_DIR_ENV, Child, supervisor_health
    from gateway.server import redis_client
    from telemetry.metrics import serve_metrics

    data_dir = Path(args.data_dir)
    given_redis = redis_url_of(args)
    ledger_dsn = ledger_dsn_of(args) or f"sqlite:///{(data_dir / 'ledger.db').resolve()}"
    config = Config(listen=args.listen, redis_url=given_redis, data_dir=data_dir, ledger_dsn=ledger_dsn)
    host, _, port_text = config.listen.rpartition(":")
    port = int(port_text) or free_port()  # one port for every process, chosen here
    target = f"{client_host(host)}:{port}"
    limits_of(args.limit)  # refuse an unknown --limit here, before any process starts
    tls, probe = server_tls(args, host)
    if tls is None:
        print(
            "medsettle: WARNING: --insecure: plaintext gRPC, no client certificates; anyone who reaches the"
            " port can settle for any institution",
            flush=True,
        )
    workers = max(1, args.workers or os.cpu_count() or 1)
    metrics_dir = (data_dir / "metrics").resolve()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before any process counts anything
    durability = durability_of(args)
    run_dir = (data_dir / "run").resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    audit_path = Path(args.audit_log).resolve() if args.audit_log else (data_dir / "audit.log").resolve()
    os.environ["MEDSETTLE_AUDIT_LOG"] = str(audit_path)
    rotator = logs.AuditRotator(audit_path, args.audit_rotate_bytes, config.timezone)
    embedded = None
    replica = None
    worker_url = None
    if config.redis_url is None:
        embedded = EmbeddedRedis(config.data_dir, appendfsync=args.appendfsync).start()
        redis_url, admin_url, worker_url = (
            embedded.url_for("gateway"),
            embedded.url,
            embedded.url_for("worker"),
        )
        print(
            f"medsettle: embedded redis-server on {embedded.public_url} (AOF in {embedded.dir}, appendfsync"
            f" {args.appendfsync}; ACL users gateway, worker, admin; passwords in {embedded.secrets_dir})",
            flush=True,
        )
        if durability.mode == "replica":  # a second redis-server replicating the first, in the data folder
            replica = EmbeddedRedis(
                config.data_dir, appendfsync=args.appendfsync, replica_of=embedded, folder="redis-replica"
            ).start()
            print(f"medsettle: embedded replica on {replica.public_url} ({replica.dir})", flush=True)
    else:
        redis_url = admin_url = config.redis_url
    refused = refuse_unfit_redis(admin_url, durability)
    if refused:
        print(f"medsettle: refusing to start: {refused}", flush=True)
        for server in (replica, embedded):
            if server is not None:
                server.stop()
        return 2
    from gateway.nhsa import cli_options as national

    nhsa_listen = national.national_listen(args, host, embedded is not None)
    if nhsa_listen is not None and nhsa_listen.endswith(":0"):
        nhsa_listen = f"{nhsa_listen[:-2]}:{free_port()}"  # one port for every process, chosen here
    nhsa_args = national.process_args(nhsa_listen, national.keys_file(args))
    stop = stop_event()
    children: list[subprocess.Popen[bytes]] = []
    posting: subprocess.Popen[bytes] | None = None
    level = args.log_level or ("WARNING" if args.demo else "INFO")
    from adapters.redis_keys import IndexKeys
    from gateway.index_key import INDEX_KEY_ENV, resolve

    index_key = resolve(args.index_key_file, data_dir, create=embedded is not None)
    # secrets travel in the children's environment (readable by this user only), never in argv
    child_env = {
        **os.environ, REDIS_ENV: redis_url, LEDGER_ENV: ledger_dsn, INDEX_KEY_ENV: index_key.hex(),
        SUPERVISOR_ENV: str(os.getpid()), RUN_DIR_ENV: str(run_dir),  # children die with this process
    }  # fmt: skip
    limit_args = [f"--limit={item}" for item in args.limit or []]

    def spawn() -> subprocess.Popen[bytes]:
        cmd = [
            "gateway-process",
            "--listen",
            f"{host}:{port}",
            *nhsa_args,
            *tls_args(tls),
            *limit_args,
            *durability_args(args),
            "--event-loop",
            args.event_loop,
        ]
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *cmd, "--log-level", level], env=child_env
        )

    try:
        if embedded is not None and not args.no_demo_data:
            client = redis_client(admin_url, config)
            report = await load_citydata_dir(client, config.citydata, index=IndexKeys(index_key))
            await client.aclose()
            print(
                f"medsettle: loaded demo data: {len(report.versions)} versions, {report.persons} persons",
                flush=True,
            )
            policies = False
            for line in report.timelines:  # the staged policy versions: which one takes over when
                if not line.startswith(" "):
                    policies = line.startswith("policy")
                if policies:
                    print(f"medsettle:   {line}", flush=True)
        children = [spawn() for _ in range(workers)]
        if not await wait_serving(target, children, probe):
            print("medsettle: the gateway processes did not become ready", flush=True)
            return 1
        mode = "mTLS" if tls is not None else "PLAINTEXT"
        print(
            f"medsettle: listening on {host}:{port} (gRPC over {mode}, health, reflection),"
            f" {workers} processes",
            flush=True,
        )
        if nhsa_listen is not None:
            scheme = "https" if tls is not None else "http"
            nhsa_host, _, nhsa_port = nhsa_listen.rpartition(":")
            print(
                f"medsettle: national interface on {scheme}://{client_host(nhsa_host)}:{nhsa_port}"
                "/fsi/api/rsfComIfsService/callService (NHSA JSON; client certificate or x-ca/x-tif"
                " signature: docs/NATIONAL_MAPPING.md)",
                flush=True,
            )
        backlog_client = client_for(admin_url)  # embedded: admin, so CONFIG GET appendfsync is seen
        if args.metrics_port >= 0:

            def redis_problem() -> tuple[str, str]:
                try:
                    facts = read_facts_sync(backlog_client)
                except redis.RedisError as exc:
                    return f"unreachable: {type(exc).__name__}: {exc}", ""
                problems = [*facts.problems(durability), facts.degraded(durability)]
                detail = (
                    f"answers; durability {durability.describe()}; appendfsync {facts.appendfsync};"
                    f" maxmemory-policy {facts.maxmemory_policy}; {facts.replicas_connected} replica(s)"
                )
                return "; ".join(p for p in problems if p), detail

            def health() -> tuple[bool, str]:
                gateways = [Child(c.pid, c.poll() is None) for c in children]
                worker = Child(posting.pid, posting.poll() is None) if posting is not None else None
                return supervisor_health(run_dir, gateways, worker, redis_problem)

            collector = BacklogCollector(backlog_client, durability)
            http = serve_metrics(args.metrics_port, health, host, collectors=[collector])
            print(f"medsettle: metrics on http://{host}:{http.server_port}/metrics", flush=True)
        # the worker serves its own metrics: it must not aggregate the gateway processes' files too, or
        # Prometheus would count every settlement twice
        worker_env = {
            k: v for k, v in child_env.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", RUN_DIR_ENV)
        }
        worker_env[REDIS_ENV] = worker_url or redis_url
        worker_metrics = str(args.metrics_port + 1 if args.metrics_port > 0 else args.metrics_port)
        worker_cmd = [sys.executable, "-m", "gateway.cli", "worker", "--metrics-port", worker_metrics,
                      "--metrics-host", host]  # fmt: skip
        if embedded is not None and not args.no_worker:
            posting = subprocess.Popen(worker_cmd, env=worker_env)
            print(
                f"medsettle: posting worker started (pid {posting.pid}), ledger {mask_url(ledger_dsn)}",
                flush=True,
            )
        status = 0
        if args.demo:
            from gateway.demo import DEMO_CARD, LOST_CARD, run_demo

            status = await run_demo(
                target,
                DEMO_CARD,
                LOST_CARD,
                certs=None if tls is None else certs_dir(args),
                insecure=tls is None,
            )
            if posting is not None:
                status = status or await show_posted(ledger_dsn, config.timezone, admin_url)
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
            if posting is not None and posting.poll() is not None:
                print(f"medsettle: posting worker exited ({posting.returncode}); restarting", flush=True)
                posting = subprocess.Popen(worker_cmd, env=worker_env)
            rotator.maybe_rotate()
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
        for server in (replica, embedded):
            if server is not None:
                server.stop()


async def wait_serving(
    target: str, children: list[subprocess.Popen[bytes]], tls: Any, timeout_s: float = 60
) -> bool:
    """The readiness probe: the health service over the same mTLS a load balancer would use."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.edge.tls import channel

    deadline = asyncio.get_running_loop().time() + timeout_s
    async with channel(target, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while asyncio.get_running_loop().time() < deadline:
            if any(child.poll() is not None for child in children):
                return False
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            await asyncio.sleep(0.1)
    return False


async def show_posted(ledger_dsn: str, timezone: str, redis_url: str) -> int:
    """After the demo: wait until the posting worker has booked everything committed (no entry left in
    the partition streams), then print the month's statement. (Waiting for a first row instead printed
    a statement without this run's settlements whenever the ledger already had rows, or had booked
    one institution's before the other's.)"""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from adapters.ledger.store import Ledger, LedgerUnavailable
    from adapters.redis_store import RedisStore
    from gateway.config import Config
    from gateway.posting.statements import institution_statements
    from gateway.server import redis_client

    month = datetime.now(ZoneInfo(timezone)).strftime("%Y-%m")
    ledger = Ledger(ledger_dsn)
    client = redis_client(redis_url, Config())
    try:
        store = RedisStore(client)
        for _ in range(200):
            try:
                if not await store.queued_events():
                    rows = await asyncio.to_thread(institution_statements, ledger, month)
                    print("== posted to the ledger: monthly institution statement")
                    print(render_statement("institutions", month, rows))
                    return 0
            except LedgerUnavailable:
                pass  # the worker has not created the ledger yet
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    print("== FAILED: the demo's settlements did not reach the ledger within 20 s")
    return 1


async def load(args: argparse.Namespace) -> int:
    from gateway.config import Config
    from gateway.data_loading import load_citydata_dir, load_files
    from gateway.server import redis_client

    url = redis_url_of(args)
    if url is None:
        raise SystemExit(f"medsettle load: --redis URL, --redis-file FILE or ${REDIS_ENV}")
    from adapters.redis_keys import IndexKeys
    from gateway.index_key import resolve

    def index() -> IndexKeys:  # persons are found by keyed card hashes; asked once every file is valid
        return IndexKeys(resolve(args.index_key_file, Path(args.data_dir), create=False))

    client = redis_client(url, Config())
    try:
        if args.dir:
            report = await load_citydata_dir(client, Path(args.dir), args.force, args.dry_run, index)
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
                force=args.force,
                dry_run=args.dry_run,
                index=index,
            )
    finally:
        await client.aclose()
    verb = "would publish" if args.dry_run else "published"
    for name, version in sorted(report.versions.items()):
        print(f"{verb} {name} = {version}")
    for line in report.timelines:
        print(line)
    print("dry run: nothing written" if args.dry_run else f"persons written: {report.persons}")
    return 0


async def demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return await run_demo(
        args.target, args.card, args.lost_card, certs=None if args.insecure else certs_dir(args),
        insecure=args.insecure, server_name=args.server_name,
    )  # fmt: skip


async def health(args: argparse.Namespace) -> int:
    """For load balancers and the Docker HEALTHCHECK: exit 0 only when the gateway reports SERVING. Speaks
    mTLS with the probe certificate (clients/probe.crt of --certs) unless --insecure."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.edge.certs import ROLE_PROBE
    from gateway.edge.tls import channel

    try:
        tls = client_tls(args, ROLE_PROBE)
        async with channel(args.target, tls) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_ms / 1000
            )
    except grpc.aio.AioRpcError as exc:
        print(f"{args.target}: {exc.code().name}")
        return 1
    except FileNotFoundError as exc:
        print(f"{args.target}: {exc}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def worker(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    from adapters.ledger.store import Ledger
    from adapters.secret_files import mask_url
    from gateway.ops.lifeline import die_with_supervisor
    from gateway.posting.budgets import load_budgets, load_institution_budgets
    from gateway.posting.retention import SETTLEMENT_DAYS_MIN
    from gateway.posting.worker import PostingWorker, WorkerConfig, redis_client
    from telemetry.metrics import serve_metrics

    die_with_supervisor()  # started by serve: stop with it

    redis_url, ledger_dsn = redis_url_of(args), ledger_dsn_of(args)
    if redis_url is None or ledger_dsn is None:
        raise SystemExit(
            f"medsettle worker: needs a Redis URL and a ledger DSN (--redis/--redis-file/${REDIS_ENV},"
            f" --ledger/--ledger-file/${LEDGER_ENV})"
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    config = WorkerConfig(
        batch_max=args.batch_max, claim_idle_ms=args.claim_idle_ms, leases=args.leases,
        lease_ttl_ms=args.lease_ttl_ms, lease_renew_every_ms=args.lease_renew_every_ms,
    )  # fmt: skip
    if config.lease_renew_every_ms * 2 > config.lease_ttl_ms:
        raise SystemExit("medsettle worker: --lease-renew-every-ms must be at most half of --lease-ttl-ms")
    days = args.settlement_retention_days
    if days is not None:
        if days < SETTLEMENT_DAYS_MIN:
            raise SystemExit(
                f"medsettle worker: --settlement-retention-days {days}: at least {SETTLEMENT_DAYS_MIN}"
                " (it is also the gateway's correction window)"
            )
        assert config.retention is not None
        config = dataclasses.replace(
            config, retention=dataclasses.replace(config.retention, settlement_days=days)
        )
    if args.consumer:
        config = dataclasses.replace(config, consumer=args.consumer)
    posting = PostingWorker(redis_client(redis_url), Ledger(ledger_dsn), config)
    if args.budgets:
        posting.budgets = load_budgets(Path(args.budgets))
        posting.institution_budgets = load_institution_budgets(Path(args.budgets))
    print(f"medsettle worker {config.consumer}: {mask_url(redis_url)} -> {mask_url(ledger_dsn)}", flush=True)
    if args.metrics_port >= 0:
        http = serve_metrics(args.metrics_port, posting.health, args.metrics_host)
        print(
            f"medsettle worker: metrics on http://{args.metrics_host}:{http.server_port}/metrics", flush=True
        )
    posting.run(stop)
    s = posting.stats
    print(
        f"medsettle worker: stopped; booked {s.booked}, again {s.duplicates}, dead letters {s.dead_lettered}"
    )
    return 0


def deadletters_audit_path(args: argparse.Namespace) -> Path:
    given = getattr(args, "audit_log", None) or os.environ.get("MEDSETTLE_AUDIT_LOG")
    return Path(given) if given else Path(getattr(args, "data_dir", DEFAULT_DATA_DIR)) / "audit.log"


def deadletters_url(args: argparse.Namespace) -> str:
    """--redis-file, --redis, $MEDSETTLE_REDIS_URL, else the embedded default's admin URL file."""
    url = secret_value(getattr(args, "redis", None), getattr(args, "redis_file", None), REDIS_ENV, "redis")
    if url:
        return url
    embedded = Path(getattr(args, "data_dir", DEFAULT_DATA_DIR)) / "secrets" / "redis-admin.url"
    if embedded.exists():
        from adapters.secret_files import read_secret

        return read_secret(embedded)
    raise SystemExit(
        f"medsettle deadletters: --redis URL, --redis-file FILE, ${REDIS_ENV}, or --data-dir of a running"
        " embedded serve"
    )


def operator_of(args: argparse.Namespace) -> str:
    import getpass
    import socket

    who = getattr(args, "operator", None) or os.environ.get("SUDO_USER") or getpass.getuser()
    return f"{who}@{socket.gethostname()}"


def age(ms: int) -> str:
    import time

    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 172800 else f"{seconds / 86400:.1f}d"


def deadletters_cmd(args: argparse.Namespace) -> int:
    """`medsettle deadletters`: what the worker could not book, and the operator's decision on each
    (docs/OPERATIONS.md, Dead letters). Every action writes an audit line with who did it."""

    from adapters.redis_topology import sync_client
    from gateway.logs import AUDIT_LOG
    from gateway.posting import deadletters as dl

    client = sync_client(deadletters_url(args), socket_timeout=5, socket_connect_timeout=2)
    action = args.action or "list"
    operator = operator_of(args)
    try:
        if action == "list":
            letters = dl.unhandled(client)
            summary = dl.summary(client)
            AUDIT_LOG.info(
                "deadletters list",
                extra={"event": "deadletters_list", "operator": operator, "unhandled": len(letters)},
            )
            if getattr(args, "json", False):
                for letter in letters:
                    print(json.dumps(letter.as_json(), ensure_ascii=False))
                return 0
            print(f"{len(letters)} unhandled dead letter(s); {summary.held} entr(y/ies) hold posted_through")
            for letter in letters:
                print(
                    f"  {letter.id}  {letter.kind or '?':<7} {letter.settlement_id or '-':<28} committed"
                    f" {age(letter.t0_ms)} ago, dead-lettered {age(letter.at_ms)} ago  {letter.stream}"
                    f" {letter.entry_id}\n      reason: {letter.reason}"
                )
            waiting = summary.held - summary.unhandled
            if waiting > 0:
                print(f"  {waiting} replayed, not booked yet (the worker books them; posted_through waits)")
            return 0
        found = dl.find(client, args.id)
        if found is None:
            print(f"medsettle deadletters: no unhandled dead letter {args.id}", file=sys.stderr)
            return 1
        letter = found
        fields = {
            "operator": operator, "dead_letter": letter.id, "stream": letter.stream,
            "entry_id": letter.entry_id, "type": letter.kind, "settlement_id": letter.settlement_id,
        }  # fmt: skip
        if action == "show":
            AUDIT_LOG.info("deadletters show", extra={"event": "deadletters_show", **fields})
            print(json.dumps({**letter.as_json(), "event": letter.event()}, ensure_ascii=False, indent=2))
            return 0
        if action == "replay":
            new = dl.replay(client, letter.id, operator)
            if new is None:
                print(f"medsettle deadletters: {args.id} was handled meanwhile", file=sys.stderr)
                return 1
            AUDIT_LOG.info(
                "deadletters replay", extra={"event": "deadletters_replay", "new_id": new, **fields}
            )
            print(
                f"{letter.id}: replayed into {letter.stream} as {new}; posted_through stays at its time"
                " until the worker books it"
            )
            return 0
        reason = args.reason.strip()
        if not reason:
            print("medsettle deadletters discard: --reason must say why", file=sys.stderr)
            return 2
        if not dl.discard(client, letter.id, operator, reason):
            print(f"medsettle deadletters: {args.id} was handled meanwhile", file=sys.stderr)
            return 1
        AUDIT_LOG.info(
            "deadletters discard", extra={"event": "deadletters_discard", "reason": reason, **fields}
        )
        print(f"{letter.id}: discarded by {operator} ({reason}); it will not be booked")
        return 0
    finally:
        client.close()


def citydata_registry() -> Path:
    from adapters.citydata_files import citydata_dir

    return citydata_dir() / "institutions.csv"


def certs_cmd(args: argparse.Namespace) -> int:
    """`medsettle certs`: a development PKI (docs/SECURITY.md). Private keys are mode 0600."""
    from gateway.edge import certs

    root = Path(getattr(args, "dir", f"{DEFAULT_DATA_DIR}/certs"))
    hosts = getattr(args, "host", None) or []
    days = getattr(args, "days", certs.LEAF_DAYS)
    layout = certs.Layout(root)
    action = args.action or "init"
    if action == "init":
        registry = Path(getattr(args, "institutions", None) or citydata_registry())
        created = certs.ensure_pki(root, registry, hosts)
        print(f"{root}: created {', '.join(created) if created else 'nothing (all present)'}")
        return 0
    if not layout.ca_key.exists():
        print(
            f"medsettle certs: no CA in {root}: run `medsettle certs init --dir {root}` first",
            file=sys.stderr,
        )
        return 2
    if action == "server":
        certs.issue_server(layout, hosts, days=days)
        print(f"{layout.server_cert}: reissued (a running gateway picks it up within a second)")
    elif action == "issue":
        if not args.institution and not args.role:
            print("medsettle certs issue: --institution CODE (or --role probe|bureau)", file=sys.stderr)
            return 2
        cert = certs.issue_client(
            layout, args.institution, args.name or args.institution or args.role, terminal=args.terminal,
            role=args.role, file_name=args.file_name, days=days,
        )  # fmt: skip
        print(f"issued serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    elif action == "revoke":
        serials = certs.revoke(layout, [Path(p) for p in args.certificates])
        print(f"{layout.crl}: {len(serials)} revoked (a running gateway refuses them within a second)")
    return 0


def audit(args: argparse.Namespace) -> int:
    """`medsettle audit`: exit 0 when the store and the ledger are what the policy allows, 1 otherwise
    (gateway/audit.py). With --data-dir and no Redis URL, the embedded redis-server of that folder is
    started for the audit and stopped after it."""
    from adapters.embedded_redis import EmbeddedRedis
    from gateway.audit import audit_redis
    from gateway.commands.backup_cmd import running_url

    url = redis_url_of(args)
    ledger = ledger_dsn_of(args)
    embedded = None
    if url is None:
        data_dir = Path(args.data_dir)
        ledger = ledger or f"sqlite:///{(data_dir / 'ledger.db').resolve()}"
        url = running_url(data_dir)  # a serve of that folder is running: audit its Redis as it is
        if url is None:
            embedded = EmbeddedRedis(data_dir).start()
            url = embedded.url
    try:
        report = asyncio.run(audit_redis(url, ledger))
    finally:
        if embedded is not None:
            embedded.stop()
    print("\n".join(report.lines()))
    return 1 if report.differences else 0


async def migrate(args: argparse.Namespace) -> int:
    from adapters.redis_keys import IndexKeys
    from gateway.config import Config
    from gateway.index_key import resolve
    from gateway.migrate import migrate as run
    from gateway.server import redis_client

    url = redis_url_of(args)
    if url is None:
        raise SystemExit(f"medsettle migrate: --redis URL, --redis-file FILE or ${REDIS_ENV}")
    index = IndexKeys(resolve(args.index_key_file, Path(args.data_dir), create=False))
    client = redis_client(url, Config())
    try:
        report = await run(client, index)
    finally:
        await client.aclose()
    print("\n".join(report.lines()))
    return 0


def statement(args: argparse.Namespace) -> int:
    import csv
    import dataclasses

    from adapters.ledger.store import Ledger
    from gateway.posting import statements

    dsn = ledger_dsn_of(args)
    if dsn is None:
        default = Path(args.data_dir) / "ledger.db"
        if not default.exists():
            raise SystemExit(
                f"medsettle statement: no ledger: --ledger DSN, --ledger-file, ${LEDGER_ENV} or {default}"
            )
        dsn = f"sqlite:///{default.resolve()}"
    ledger = Ledger(dsn)
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


def index_key_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index-key-file",
        help="the deployment's index key (hex, mode 0600); else $MEDSETTLE_INDEX_KEY, else"
        " <data-dir>/secrets/index.key (card and ID numbers are keyed hashes in Redis)",
    )
    if not any(a.dest == "data_dir" for a in p._actions):
        p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where secrets/index.key is")


def event_loop_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--event-loop", choices=["asyncio", "uvloop"], default="asyncio",
        help="the gateway processes' event loop: the standard library's (default) or uvloop "
        "(docs/BENCHMARKS.md measures both)",
    )  # fmt: skip


def run_loop(kind: str, main: Coroutine[Any, Any, int]) -> int:
    """Runs a gateway process's main coroutine on the chosen event loop. grpc.aio runs on any asyncio
    loop (its completion queue has its own poller thread that hands events to the loop)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def build_parser() -> argparse.ArgumentParser:
    from gateway.nhsa.cli_options import add_process_flags, add_serve_flags

    parser = argparse.ArgumentParser(prog="medsettle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (embedded redis-server and demo data by default)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0: any free port)")
    secret_flags(
        p, "redis", "redis://[user:pass@]host:port/db or rediss://...; none: an embedded redis-server"
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="embedded redis, certificates, audit log")
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
    secret_flags(
        p, "ledger",
        "ledger DSN for reconciliation, statements and the embedded worker (default: sqlite in --data-dir)",
    )  # fmt: skip
    server_tls_flags(p)
    p.add_argument(
        "--host",
        action="append",
        help="a name or address clients use (repeatable): in a created server certificate",
    )
    p.add_argument(
        "--limit", action="append", metavar="NAME=VALUE",
        help="an edge limit (repeatable), e.g. requests_per_s_max=200: docs/SECURITY.md lists them",
    )  # fmt: skip
    p.add_argument(
        "--audit-rotate-bytes", type=int, default=64 << 20,
        help="rotate <data-dir>/audit.log at this size (and at midnight); 0: by day only",
    )  # fmt: skip
    index_key_flags(p)
    add_serve_flags(p)  # the national interface (gateway/nhsa/cli_options.py)
    p.add_argument("--audit-log", help="the audit log (default <data-dir>/audit.log), e.g. on its own volume")
    durability_flags(p)
    p.add_argument(
        "--appendfsync", choices=["always", "everysec", "no"], default="always",
        help="embedded redis-server: fsync the AOF at every write (default), every second, or never",
    )  # fmt: skip
    event_loop_flag(p)
    p.set_defaults(func=lambda a: asyncio.run(serve(a)))

    p = sub.add_parser("gateway-process", help=argparse.SUPPRESS)  # one of serve's processes
    p.add_argument("--listen", required=True)
    secret_flags(p, "redis", argparse.SUPPRESS)
    secret_flags(p, "ledger", argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--insecure", action="store_true")
    add_process_flags(p)
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--tls-crl"):
        p.add_argument(flag)
    p.add_argument("--limit", action="append")
    durability_flags(p)
    event_loop_flag(p)
    p.set_defaults(func=lambda a: run_loop(a.event_loop, gateway_process(a)))

    p = sub.add_parser("load", help="validate and publish policies, catalogs, institutions and persons")
    secret_flags(p, "redis", f"redis://... (or --redis-file, ${REDIS_ENV})")
    p.add_argument(
        "--dir", help="a whole citydata folder (policies/, catalogs/, institutions.csv, persons.json)"
    )
    p.add_argument("--policy", action="append", help="a policy TOML file (repeatable)")
    p.add_argument("--catalog", action="append", metavar="REGION=FILE.csv", help="a catalog (repeatable)")
    p.add_argument("--institutions", help="institutions CSV")
    p.add_argument("--persons", help="persons JSON (new persons, or updates of existing ones)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and show what would be in force on which dates"
    )
    index_key_flags(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="publish a policy version that leaves days with no policy, or replaces one of the same start",
    )
    p.set_defaults(func=lambda a: asyncio.run(load(a)))

    p = sub.add_parser("demo", help="swipe demo cards against a running gateway and check every step")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--card", default="Y53736293")
    p.add_argument("--lost-card", default="Q45301612")
    client_tls_flags(p)
    p.set_defaults(func=lambda a: asyncio.run(demo(a)))

    p = sub.add_parser("worker", help="book committed settlements into the ledger, exactly once")
    secret_flags(p, "redis", f"redis://... (or --redis-file, ${REDIS_ENV})")
    secret_flags(
        p, "ledger", f"sqlite:///path/ledger.db or postgresql://... (or --ledger-file, ${LEDGER_ENV})"
    )
    p.add_argument("--consumer", help="consumer name in the posting group (default: <host>-posting)")
    p.add_argument("--batch-max", type=int, default=500, help="entries per database transaction")
    p.add_argument("--claim-idle-ms", type=int, default=30_000, help="reclaim entries pending this long")
    p.add_argument(
        "--leases", action="store_true",
        help="share the partitions with other workers through leases (always on with redis+cluster://)",
    )  # fmt: skip
    p.add_argument(
        "--lease-ttl-ms", type=int, default=10_000, help="a dead worker's partitions wait this long"
    )
    p.add_argument(
        "--lease-renew-every-ms", type=int, default=2_000, help="renew leases and rebalance this often"
    )
    p.add_argument(
        "--settlement-retention-days", type=int, default=None, metavar="DAYS",
        help="settlements settled this many days ago leave Redis for the ledger within their plan-year"
        " (and can no longer be corrected at the gateway); default: with their plan-year",
    )  # fmt: skip
    p.add_argument(
        "--metrics-port", type=int, default=9465, help="/metrics and /healthz; 0 any free port, -1 off"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics listen on")
    p.add_argument(
        "--budgets",
        help="monthly fund budgets and institutions' annual budgets (TOML) to export beside the spend",
    )
    p.set_defaults(func=worker)

    p = sub.add_parser("deadletters", help="list, show, replay or discard posting dead letters (audited)")
    deadletter_flags(p)
    p.set_defaults(func=deadletters_cmd, action="list")
    actions = p.add_subparsers(dest="action", required=False, metavar="[list|show|replay|discard]")
    a = actions.add_parser("list", help="the unhandled dead letters: reasons and ages (the default)")
    deadletter_flags(a)
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = actions.add_parser("show", help="every field of one dead letter, its event as JSON")
    deadletter_flags(a)
    a.add_argument("id", help="the dead letter's id (from list)")
    a = actions.add_parser("replay", help="put it back into its partition stream for booking")
    deadletter_flags(a)
    a.add_argument("id")
    a = actions.add_parser("discard", help="never book it: needs --reason, recorded with who")
    deadletter_flags(a)
    a.add_argument("id")
    a.add_argument("--reason", required=True, help="why (booked by hand, a duplicate, ...): recorded")

    p = sub.add_parser(
        "migrate", help="bring a Redis of the first release to this keyspace (gateways stopped)"
    )
    secret_flags(p, "redis", f"redis://... (or --redis-file, ${REDIS_ENV})")
    index_key_flags(p)
    p.set_defaults(func=lambda a: asyncio.run(migrate(a)))

    p = sub.add_parser(
        "audit", help="re-run every live settlement and prove store, accounts and ledger agree; exit 1 if not"
    )
    secret_flags(p, "redis", f"redis://... (or --redis-file, ${REDIS_ENV}); none: --data-dir's own")
    secret_flags(p, "ledger", "the ledger to compare with (default with --data-dir: its ledger.db)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="an embedded default's folder")
    p.set_defaults(func=audit)

    p = sub.add_parser("statement", help="institution statements, clearing matrix or fund spend for a month")
    p.add_argument("kind", choices=["institutions", "clearing", "funds"])
    secret_flags(
        p, "ledger", f"ledger DSN (or --ledger-file, ${LEDGER_ENV}; default: --data-dir's ledger.db)"
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="an embedded default's folder")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--institution")
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=statement)

    p = sub.add_parser("health", help="ask a gateway's gRPC health service; exit 0 only when SERVING")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="a service name; empty: the whole server")
    p.add_argument("--timeout-ms", type=int, default=2000)
    client_tls_flags(p)
    p.add_argument("--tls-cert", help="a client certificate instead of the probe's in --certs")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="the CA of the gateway's certificate")
    p.set_defaults(func=lambda a: asyncio.run(health(a)))

    p = sub.add_parser("certs", help="create a development CA, server and terminal certificates; revoke")
    p.set_defaults(func=certs_cmd, action="init")
    certs_flags(p)
    actions = p.add_subparsers(dest="action", required=False, metavar="[init|server|issue|revoke]")
    a = actions.add_parser(
        "init", help="what is missing: CA, server, one per institution, probe (the default)"
    )
    certs_flags(a)
    a = actions.add_parser("server", help="a new server certificate (picked up by a running gateway)")
    certs_flags(a)
    a = actions.add_parser("issue", help="one client certificate")
    certs_flags(a)
    a.add_argument("--institution", help="the institution code")
    a.add_argument("--terminal", help="bind the certificate to this terminal id")
    a.add_argument(
        "--role", choices=["probe", "bureau"],
        help="no institution: a probe (health only) or the bureau's finance office (GetClearing)",
    )  # fmt: skip
    a.add_argument("--name", help="subject CN (default: the institution code)")
    a.add_argument("--file-name", help="clients/<file-name>.crt (default: <institution>[-<terminal>])")
    a = actions.add_parser("revoke", help="add certificates to the CA's CRL (refused within a second)")
    certs_flags(a)
    a.add_argument("certificates", nargs="+", metavar="CERT.crt")

    p = sub.add_parser("split", help="split one or more self-contained cases offline and print JSON")
    p.add_argument("cases", nargs="+", metavar="CASE.json")
    p.add_argument("--no-trace", action="store_true", help="leave the rule trace out")
    p.add_argument("--table", action="store_true", help="print readable tables instead of JSON")
    p.set_defaults(func=cmd_split)

    from gateway.commands import backup_cmd, claim_cmd, month_end_cmd, rebuild_cmd

    month_end_cmd.register(sub)
    claim_cmd.register(sub)
    rebuild_cmd.register(sub)
    backup_cmd.register(sub)
    from gateway.commands import dev_cluster_cmd

    dev_cluster_cmd.register(sub)
    return parser


def durability_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--durability", choices=["aof", "replica"], default="aof",
        help="aof: a commit is durable in the primary's AOF; replica: acknowledged only after WAIT confirms"
        " --replicas replica(s) (docs/OPERATIONS.md)",
    )  # fmt: skip
    p.add_argument("--replicas", type=int, default=1, help="replica mode: replicas that confirm each commit")
    p.add_argument(
        "--replica-wait-ms", type=int, default=500,
        help="replica mode: how long WAIT waits; unconfirmed: UNAVAILABLE, outcome unknown",
    )  # fmt: skip


def deadletter_flags(p: argparse.ArgumentParser) -> None:
    # on the command and on each action, like certs: `deadletters --redis U list` and `... list --redis U`
    p.add_argument(
        "--redis", default=argparse.SUPPRESS, help="redis://... (or --redis-file, $MEDSETTLE_REDIS_URL)"
    )
    p.add_argument("--redis-file", default=argparse.SUPPRESS, help="a file (mode 0600) holding the Redis URL")
    p.add_argument(
        "--data-dir", default=argparse.SUPPRESS,
        help=f"an embedded default's folder: its admin URL and audit log (default {DEFAULT_DATA_DIR})",
    )  # fmt: skip
    p.add_argument(
        "--audit-log", default=argparse.SUPPRESS, help="default: $MEDSETTLE_AUDIT_LOG or <data-dir>/audit.log"
    )
    p.add_argument("--operator", default=argparse.SUPPRESS, help="who acts (default: the login name)")


def certs_flags(p: argparse.ArgumentParser) -> None:
    # on the command and on each action, so `certs --dir D` and `certs issue --dir D` both work
    p.add_argument("--dir", default=argparse.SUPPRESS, help=f"the folder (default {DEFAULT_DATA_DIR}/certs)")
    p.add_argument("--host", action="append", default=argparse.SUPPRESS, help="server: a name or address")
    p.add_argument("--institutions", default=argparse.SUPPRESS, help="init: the registry CSV")
    p.add_argument("--days", type=int, default=argparse.SUPPRESS, help="validity of what is issued")


def secret_flags(p: argparse.ArgumentParser, name: str, help_text: str) -> None:
    p.add_argument(f"--{name}", default=None, help=help_text)
    p.add_argument(
        f"--{name}-file",
        help=argparse.SUPPRESS
        if help_text == argparse.SUPPRESS
        else f"a file (mode 0600) holding the {name} URL",
    )


def server_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC, no client certificates (logs a warning)"
    )
    p.add_argument(
        "--certs", help="a folder laid out by `medsettle certs` (default: <data-dir>/certs, created)"
    )
    p.add_argument("--tls-cert", help="the server's certificate chain (PEM), instead of --certs")
    p.add_argument("--tls-key", help="its private key (PEM, mode 0600)")
    p.add_argument("--tls-client-ca", help="CA bundle (PEM) whose client certificates are accepted")
    p.add_argument("--tls-crl", help="a CRL (PEM) of that CA, reread while serving")
    p.add_argument(
        "--probe-cert", help="client certificate of the readiness probe (default: the certs folder's)"
    )
    p.add_argument("--probe-key")
    p.add_argument(
        "--probe-ca", help="CA of the server certificate, for the probe (default: --tls-client-ca)"
    )


def client_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--certs",
        help=f"the folder `medsettle certs` made (default: ${CERTS_ENV} or {DEFAULT_DATA_DIR}/certs)",
    )
    p.add_argument("--insecure", action="store_true", help="plaintext, for a gateway started with --insecure")
    p.add_argument("--server-name", help="the name in the gateway's certificate, when --target is not one")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway import logs

    audit = None
    if args.command == "serve":
        audit = Path(args.audit_log) if args.audit_log else Path(args.data_dir) / "audit.log"
    if args.command == "gateway-process":  # the audit log of the serve it belongs to
        audit = Path(os.environ.get("MEDSETTLE_AUDIT_LOG", f"{DEFAULT_DATA_DIR}/audit.log"))
    if args.command == "deadletters" or getattr(args, "audited", False):  # operators' actions on money
        audit = deadletters_audit_path(args)
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
