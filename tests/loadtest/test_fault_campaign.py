"""The fault campaign's short version (loadtest/fault_campaign.py): a minute of settle load from retrying
terminals while the worker, redis-server and gateway processes are SIGKILLed and Redis is wiped and
rebuilt from the ledger; nothing acknowledged is lost or doubled and the auditor finds no difference."""

from __future__ import annotations

import pytest

from loadtest import fault_campaign


def test_kills_and_a_wipe_lose_and_double_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--minutes", "1", "--worker-kills", "5", "--redis-kills", "2", "--gateway-kills", "2",
            "--persons", "300", "--terminals", "6"]  # fmt: skip
    status = fault_campaign.main(argv)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "kills: gateway 2, redis 2, wipe 1, worker 5" in out
    assert "lost 0, doubled 0, unannounced 0" in out
