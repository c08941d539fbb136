"""Operations: the metrics a live gateway and worker expose after real traffic, checked with promtool;
the alert rules' unit tests; and a real Prometheus scraping both. promtool and prometheus come from
Debian's `prometheus` package (.ci/run installs it); where it cannot be installed these tests skip and
say so."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis, free_port
from adapters.ledger.store import Ledger
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.server import Gateway
from telemetry.metrics import serve_metrics

from ..posting.test_worker import add_persons, settle_many

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PERSONAL = (
    "Y53736293",
    "PSN500000000001",
    "500103197803127019",
    "张伟",
)  # a card, a person id, an ID, a name


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package 'prometheus'; .ci/run installs it)")
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(DEPLOY / "alerts_test.yml")], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.asyncio
async def test_live_gateway_metrics_after_traffic_pass_promtool(gateway: Gateway) -> None:
    promtool = tool("promtool")
    http = serve_metrics(0, lambda: (gateway.healthy, "ok"), "127.0.0.1")
    before = scrape(http.server_port)
    await add_persons(gateway)
    await settle_many(gateway, 12, reverse_every=4)
    import grpc

    from gateway.protos import pb, pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.SettlementServiceStub(channel)
        env = pb.Envelope(institution_code="H50010300001", terminal_id="T", message_id="MX1")
        await stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=env, person=pb.PersonRef(card_no="Y53736293"))
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.QueryEligibility(
                pb.QueryEligibilityRequest(envelope=env, person=pb.PersonRef(card_no="Q45301612"))
            )
    after = scrape(http.server_port)
    http.shutdown()
    checked = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    grew = lambda prefix: value(after, prefix) - value(before, prefix)  # noqa: E731
    assert (
        grew(
            'medsettle_settlements_total{district="500103",region="500000",scheme="employee",visit_type="outpatient"}'
        )
        >= 0
    )
    assert grew("medsettle_settlements_total") == 12
    assert grew("medsettle_reversals_total") == 3
    assert grew('medsettle_fund_paid_fen_total{fund_code="310100"') >= 0
    assert grew('grpc_server_handled_total{grpc_code="OK",grpc_method="QueryEligibility"') == 1
    assert (
        grew('grpc_server_handled_total{grpc_code="FAILED_PRECONDITION",grpc_method="QueryEligibility"') == 1
    )
    assert grew('medsettle_rejections_total{code="CARD_LOST"}') == 1
    assert (
        'grpc_server_handling_seconds_bucket{grpc_method="QueryEligibility",grpc_service="medsettle.v1.SettlementService",grpc_type="unary",le="0.0005"}'
        in after
    )
    assert 'medsettle_static_version_info{kind="policy",region="500000",version="cq-2026.1"} 1.0' in after
    assert grew('medsettle_cache_requests_total{cache="card"') >= 1
    for secret in PERSONAL:
        assert secret not in after, "personal data in a metric label"


def run_worker_with_metrics(r: redis.Redis, dsn: str) -> tuple[threading.Event, Any, int]:
    worker = PostingWorker(r, Ledger(dsn), WorkerConfig(consumer="w", observe_every_ms=100, block_ms=100))
    worker.budgets = {("500000", "500103", "310100"): 1_000_000}
    http = serve_metrics(0, worker.health, "127.0.0.1")
    stop = threading.Event()
    threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
    return stop, http, int(http.server_port)


@pytest.mark.asyncio
async def test_real_prometheus_scrapes_gateway_and_worker(
    gateway: Gateway, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    prometheus = tool("prometheus")
    gateway_http = serve_metrics(0, lambda: (gateway.healthy, "ok"), "127.0.0.1")
    stop, worker_http, worker_port = run_worker_with_metrics(
        redis.Redis.from_url(redis_server.url), f"sqlite:///{tmp_path / 'ledger.db'}"
    )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "medsettle-gateway",
                        "static_configs": [{"targets": [f"127.0.0.1:{gateway_http.server_port}"]}],
                    },
                    {
                        "job_name": "medsettle-worker",
                        "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                    },
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await add_persons(gateway)
        await settle_many(gateway, 10)

        def query(q: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return list(json.loads(reply.read())["data"]["result"])

        deadline = time.monotonic() + 60
        while True:
            try:
                up = query("up == 1")
                settled = query("sum(medsettle_settlements_total)")
                booked = query('sum(medsettle_posting_booked_total{kind="settle"})')
                if (
                    len(up) == 2
                    and settled
                    and float(settled[0]["value"][1]) >= 10
                    and booked
                    and float(booked[0]["value"][1]) >= 10
                ):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("Prometheus did not see both targets up and the settlements in time")
            await asyncio.sleep(0.5)
        assert {r["metric"]["job"] for r in up} == {"medsettle-gateway", "medsettle-worker"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        stop.set()
        gateway_http.shutdown()
        worker_http.shutdown()
