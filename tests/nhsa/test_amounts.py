"""Units: yuan text to fen and back by integers only, the JSON writer, the SM3 MAC of the x-ca scheme."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st

from gateway.nhsa.amounts import BadNumber, Fixed, dumps, fen, loads, ratio, yuan
from gateway.nhsa.signing import hmac_sm3_hex, tif_signature


def test_yuan_text_and_numbers_become_fen_exactly() -> None:
    assert [fen(v) for v in ("4.52", "0.1", "9", 9, "18808.16", "-25.10", "1.000")] == [
        452,
        10,
        900,
        900,
        1880816,
        -2510,
        100,
    ]
    body = loads(b'{"a": 4.52, "b": 0.1, "c": 1e2}')  # JSON numbers arrive as their text, never a float
    assert body == {"a": "4.52", "b": "0.1", "c": "1e2"}
    assert fen(body["a"]) == 452


@pytest.mark.parametrize("bad", ["1.005", "abc", "1e2", "", " ", "NaN", "0x10", True, None, [1], {"a": 1}])
def test_what_is_not_yuan_with_two_decimals_is_refused(bad: object) -> None:
    with pytest.raises(BadNumber):
        fen(bad)


def test_non_numbers_in_json_are_refused() -> None:
    with pytest.raises(ValueError):
        loads(b'{"a": NaN}')


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_fen_survive_the_wire_exactly(amount: int) -> None:
    text = dumps({"x": yuan(amount)})
    assert fen(loads(text)["x"]) == amount
    assert json.loads(text, parse_float=str)["x"] == yuan(amount).text()


def test_output_numbers_carry_their_decimals() -> None:
    assert dumps(
        {"a": yuan(452), "b": yuan(-5), "r": ratio(500), "n": None, "s": "张*", "l": [Fixed(2, 0)]}
    ) == ('{"a":4.52,"b":-0.05,"r":0.0500,"n":null,"s":"张*","l":[2]}')


def test_no_float_in_the_national_front_end() -> None:
    root = Path(__file__).resolve().parents[2]
    for path in [*(root / "gateway" / "nhsa").glob("*.py"), root / "adapters" / "nhsa_store.py"]:
        assert "float(" not in path.read_text(), path


def test_hmac_sm3_is_rfc2104_over_the_standard_sm3() -> None:
    digest = hashes.Hash(hashes.SM3())
    digest.update(b"abc")  # GB/T 32905-2016, example 1
    assert digest.finalize().hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"

    def sm3(data: bytes) -> bytes:
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        return h.finalize()

    key, message = b"institution secret", b"1718000000\n{}"
    padded = key.ljust(64, b"\0")
    inner = sm3(bytes(b ^ 0x36 for b in padded) + message)
    assert hmac_sm3_hex(key, message) == sm3(bytes(b ^ 0x5C for b in padded) + inner).hex()
    assert tif_signature("1", "t", "n") == hashlib.sha256(b"1tn1").hexdigest()
