"""Records written to Redis and the ledger (adapters/settlement_records.dumps) are byte for byte what the
standard library's json.dumps wrote before the switch to orjson: records of either age read alike and
compare equal (the rebuild compares settlement hashes byte for byte)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.settlement_records import dumps

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(),  # any Unicode, names and addresses in Chinese included
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_the_same_bytes_as_the_standard_library(value: Any) -> None:
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
