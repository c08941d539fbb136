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
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
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


def test_compose_heals_and_keeps_its_data() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        if name != "loader":  # a one-shot job
            assert service.get("restart") == "unless-stopped", name
    mounts = {name: [v.split(":")[0:2] for v in s.get("volumes", [])] for name, s in services.items()}
    assert ["redis-data", "/data"] in mounts["redis"]
    assert ["postgres-data", "/var/lib/postgresql/data"] in mounts["postgres"]
    assert ["prometheus-data", "/prometheus"] in mounts["prometheus"]
    audit = services["gateway"]["command"]
    audit_dir = str(Path(audit[audit.index("--audit-log") + 1]).parent)
    assert ["audit-log", audit_dir] in mounts["gateway"], "the audit log on a volume of its own"
    assert {"redis-data", "postgres-data", "audit-log", "prometheus-data"} <= set(compose["volumes"])
    # alerts go somewhere: Prometheus -> Alertmanager -> the webhook receiver service
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target.split(":")[0] in services
    manager = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    urls = [w["url"] for r in manager["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(u.split("//")[1].split(":")[0] in services for u in urls)
    assert services["alert-receiver"]["entrypoint"][-1] == "gateway.ops.alert_receiver"


# each title word, and what a panel with it in its title must query
TITLE_QUERIES = {
    "pending": "medsettle_stream_pending_entries",
    "waiting": "medsettle_stream_entries",
    "dead letters": "medsettle_posting_dead_letters_unhandled",
    "posting lag": "medsettle_posting_lag_seconds",
    "budget": "medsettle_fund_budget_month_fen",
    "cash": "medsettle_cash_paid_fen_total",
    "personal account": "medsettle_account_paid_fen_total",
    "replicas": "medsettle_redis_replicas_connected",
    "worker health": "medsettle_worker_healthy",
    "p99": "histogram_quantile(0.99",
    "p50": "histogram_quantile(0.5",
}


def test_dashboard_panels_query_what_their_titles_say() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "medsettle.json").read_text())
    for panel in dashboard["panels"]:
        exprs = " ".join(t["expr"] for t in panel["targets"])
        for word, needed in TITLE_QUERIES.items():
            if word in panel["title"].lower():
                assert needed in exprs, f"{panel['title']!r} does not query {needed}"
        for target in panel["targets"]:
            assert target.get("legendFormat"), f"{panel['title']!r}: a target without a legend"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"region", "instance"} <= set(variables)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any('region=~"$region"' in e for e in exprs) and any('instance=~"$instance"' in e for e in exprs)
    for expr in exprs:
        if "medsettle_settlements_total" in expr or "medsettle_fund_paid_fen_total" in expr:
            assert 'region=~"$region"' in expr, expr


def test_the_image_copies_every_package_the_project_installs() -> None:
    # the build stage installs what it copied: a package left out (telemetry/ once was) makes an image
    # whose every command fails on import
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {
        line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
    }
    missing = [p.rstrip("*") for p in packages["include"] if p.rstrip("*") not in copied]
    assert not missing, f"Dockerfile does not COPY {missing}"
