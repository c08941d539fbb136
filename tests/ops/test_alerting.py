"""Alerts reach someone: a real Prometheus evaluates deploy/prometheus/alerts.yml on the backlog the
supervisor exports from a real Redis holding a dead letter, sends the firing MedSettleDeadLetters to a
real Alertmanager routed by deploy/alertmanager/alertmanager.yml (timings shortened, the webhook pointed
at this test), and the webhook receiver (gateway/ops/alert_receiver.py) gets the firing alert.

The binaries are Debian's `prometheus` and `prometheus-alertmanager`; .ci/run installs them. Outside CI
the test skips when they are missing; in CI (CI=true) it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis, free_port
from adapters.ledger.store import Ledger
from gateway.ops.alert_receiver import receiver
from gateway.ops.backlog import BacklogCollector
from gateway.posting.worker import GROUP, PostingWorker, WorkerConfig
from telemetry.metrics import serve_metrics

ROOT = Path(__file__).resolve().parents[2]
FIRING_WITHIN_S = 120.0  # generous: scrape and evaluation every second, group_wait 1 s, a busy machine


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    reason = f"{' or '.join(names)} not installed (Debian packages prometheus, prometheus-alertmanager)"
    if os.environ.get("CI"):
        pytest.fail(reason + ": .ci/run installs them, CI must run this test")
    pytest.skip(reason)


def dead_letter(r: redis.Redis, tmp_path: Path) -> None:
    """A real poison entry, dead-lettered by the real worker."""
    r.xgroup_create(keys.stream_key(9), GROUP, id="0", mkstream=True)
    r.xadd(keys.stream_key(9), {"type": "settle", "sid": "S009-bad", "event": "{not json"})
    worker = PostingWorker(r, Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"), WorkerConfig(consumer="w"))
    worker.prepare()
    while worker.stats.dead_lettered == 0:
        worker.step()


def test_a_firing_alert_reaches_the_webhook_receiver(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    prometheus = binary("prometheus")
    alertmanager = binary("prometheus-alertmanager", "alertmanager")
    r = redis.Redis.from_url(redis_server.url)
    dead_letter(r, tmp_path)
    exporter = serve_metrics(0, None, "127.0.0.1", collectors=[BacklogCollector(r)])

    received: list[dict[str, Any]] = []
    hook = receiver("127.0.0.1", 0, received.append)
    threading.Thread(target=hook.serve_forever, daemon=True).start()

    manager = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    manager["route"].update(group_wait="1s", group_interval="1s")
    for r_ in manager["receivers"]:
        for hook_config in r_.get("webhook_configs", []):
            hook_config["url"] = f"http://127.0.0.1:{hook.server_port}/"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(manager))
    am_port = free_port()
    prometheus_config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    prometheus_config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prometheus_config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
    prometheus_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{am_port}"
    ]
    prometheus_config["scrape_configs"] = [
        {
            "job_name": "medsettle-gateway",
            "static_configs": [{"targets": [f"127.0.0.1:{exporter.server_port}"]}],
        }
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    processes = [
        subprocess.Popen(
            [alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{free_port()}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + FIRING_WITHIN_S
        while not firing(received, "MedSettleDeadLetters"):
            assert all(p.poll() is None for p in processes), "prometheus or alertmanager exited"
            assert time.monotonic() < deadline, f"no firing alert reached the receiver: {received}"
            time.sleep(0.5)
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait(timeout=30)
        hook.shutdown()
        exporter.shutdown()
    alert = firing(received, "MedSettleDeadLetters")
    assert alert is not None
    assert alert["labels"]["severity"] == "ticket"
    assert alert["annotations"]["runbook"] == "docs/OPERATIONS.md#dead-letters"
    assert alert["annotations"]["summary"].startswith("1 posting entries are dead letters")
    assert json.dumps(received)  # what the receiver logs is plain JSON


def firing(received: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for notification in received:
        for alert in notification.get("alerts", []):
            if alert["labels"].get("alertname") == name and alert["status"] == "firing":
                return dict(alert)
    return None
