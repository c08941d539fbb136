"""Per-institution annual global budgets (总额预算): the spend is what the ledger (SQLite, PostgreSQL)
has booked from the funds to the institution this year, reversals netted; the worker exports it beside
the budget for the alert MedSettleInstitutionBudgetBurn (its promtool test is in
deploy/prometheus/alerts_test.yml); the budgets file is validated naming the field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Entry, Ledger
from gateway.engine.routing import mirror, route
from gateway.posting.budgets import load_budgets, load_institution_budgets
from gateway.posting.statements import institution_fund_spend
from gateway.posting.worker import PostingWorker, WorkerConfig
from rules_cache.reader import DataError

from .test_routing_and_ledger import event

CITY_BUDGETS = Path(__file__).resolve().parents[2] / "citydata" / "budgets.toml"


def book_year(ledger: Ledger) -> None:
    ledger.migrate()
    june = route(event())  # 70,000 from the funds to H50010300001 in June 2026
    ledger.book([Entry(*june, "1-0")])
    dec = route(event(sid="S107-261201-bb", msgid="M3", at="2026-12-01T10:00:00+08:00"))
    ledger.book([Entry(*dec, "2-0")])
    reversed_ = route(event(sid="S107-261202-cc", msgid="M4", at="2026-12-02T10:00:00+08:00"))
    ledger.book([Entry(*reversed_, "3-0")])
    rj, rt = mirror(*reversed_, {"msgid": "M5", "at": "2026-12-02T11:00:00+08:00"})
    ledger.book([Entry(rj, rt, "4-0")])
    last_year = route(event(sid="S107-251230-dd", msgid="M6", at="2025-12-30T10:00:00+08:00"))
    ledger.book([Entry(*last_year, "5-0")])


def test_the_year_spend_is_what_the_funds_paid_the_institution(ledger: Ledger) -> None:
    book_year(ledger)
    assert institution_fund_spend(ledger, 2026) == [("H50010300001", 140_000)]
    assert institution_fund_spend(ledger, 2025) == [("H50010300001", 70_000)]


def test_the_worker_exports_spend_beside_budget(ledger: Ledger, tmp_path: Path) -> None:
    book_year(ledger)
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        worker = PostingWorker(
            redis.Redis.from_url(server.url),
            ledger,
            WorkerConfig(observe_every_ms=0),
            today=lambda: date(2026, 12, 2),
        )
        worker.institution_budgets = {("H50010300001", 2026): 150_000, ("H51200200001", 2026): 9_000}
        worker.observe()
    finally:
        server.stop()

    def gauge(name: str, institution: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"institution": institution})

    assert gauge("medsettle_institution_fund_spend_year_fen", "H50010300001") == 140_000
    assert gauge("medsettle_institution_budget_year_fen", "H50010300001") == 150_000
    assert gauge("medsettle_institution_fund_spend_year_fen", "H51200200001") == 0  # nothing paid yet


def test_the_shipped_budgets_file_loads_both_kinds() -> None:
    assert load_institution_budgets(CITY_BUDGETS)[("H50010300001", 2026)] == 30_000_000_000
    assert load_budgets(CITY_BUDGETS)[("500000", "500103", "310100")] == 1_200_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[institution_budget]]\ninstitution = "H1"\nyear = 2026\n',
            "institution_budget[0].fund_fen: required",
        ),
        (
            '[[institution_budget]]\ninstitution = "H1"\nyear = 2026\nfund_fen = 1\n' * 2,
            "institution_budget[1]: a second budget for institution H1 in 2026",
        ),
        (
            '[[institution_budget]]\ninstitution = "H1"\nyear = 26\nfund_fen = 1\n',
            "institution_budget[0].year",
        ),
    ],
)
def test_bad_institution_budgets_name_the_field(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_institution_budgets(path)
