"""The gateway says how its engine runs: an operator sees a stale build that fell back to the sources."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import compiled_engine
from telemetry import metrics

pytestmark = pytest.mark.asyncio


async def test_the_engine_kind_is_a_metric(gateway: Any) -> None:
    kind = compiled_engine.kind()
    assert kind in ("compiled", "python")
    assert metrics.ENGINE_INFO.labels(kind)._value.get() == 1
