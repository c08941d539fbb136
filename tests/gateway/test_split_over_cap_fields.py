"""Construct 9 on the wire: a Split whose basic fund was cut by its annual maximum carries the uncapped
payment and the part above the maximum (proto fields 100, 101); one that was not cut carries zeros, so
the bytes of every old settlement stay the same."""

from __future__ import annotations

from gateway.codec import encode_split_only
from tests.engine.builders import state
from tests.engine.test_golden_breadth import settle


def test_the_cap_figures_travel_in_the_split_message() -> None:
    capped = encode_split_only(
        settle(5, 2, ("A1", 200_000, 1), st=state(fund_basic=300_000)), "999800", "999801"
    )
    assert (capped.basic_uncapped_fen, capped.basic_over_cap_fen) == (160_000, 60_000)
    free = encode_split_only(settle(5, 2, ("A1", 100_000, 1)), "999800", "999801")
    assert (free.basic_uncapped_fen, free.basic_over_cap_fen) == (0, 0)
    assert b"\xa0\x06" not in free.SerializeToString()  # field 100 absent: unchanged bytes
