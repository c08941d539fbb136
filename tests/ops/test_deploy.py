"""The deployment files stay consistent with the code: docker-compose runs the same `medsettle`
commands and flags a checkout does, and every metric a dashboard panel or an alert uses is one the
gateway or worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.cli import build_parser
from telemetry import metrics  # registers every metric

ROOT = Path(__file__).resolve().parents[2]
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "on", "or", "vector", "up", "le", "and",
}  # fmt: skip


def exported_names() -> set[str]:
    """What the processes export: every metric object (the worker's health gauge is created only in the
    worker, so it is created here too) and the backlog the supervisor reads from Redis at each scrape
    (tests/ops/test_backlog.py checks a real scrape yields every one of them)."""
    from prometheus_client.core import REGISTRY

    metrics.worker_healthy()
    return set(REGISTRY._names_to_collectors) | set(metrics.BACKLOG)


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\([^()]*\)\s*(?=\()", "", expr)
    expr = re.sub(r"\b(by|on)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-z_][a-z0-9_]*", expr))
    return {w for w in words if "_" in w and w not in PROMQL_WORDS}


def test_compose_runs_the_same_commands_as_a_checkout() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "gateway", "worker", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    parser = build_parser()
    for name in ("gateway", "worker", "loader"):
        args = parser.parse_args(services[name]["command"])  # fails on a flag the CLI does not have
        assert args.command in ("serve", "worker", "load")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and "USER medsettle" in dockerfile
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD [")]
    parser.parse_args(json.loads(cmd.removeprefix("CMD ")))


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = exported_names()
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "medsettle.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 20
    for expr in exprs:
        unknown = {m for m in metric_names(expr) if m not in exported}
        assert not unknown, f"{expr}: {unknown}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency", "errors", "fund", "cache", "posting lag", "dead letters", "budget"):
        assert topic in titles, topic
