"""`medsettle split` runs every shipped example case and prints the expected split as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "cases").glob("*.json"))


def medsettle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, check=False
    )


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_case_splits_as_expected(path: Path) -> None:
    result = medsettle("split", str(path))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expect = json.loads(path.read_text())["expect"]
    if "rejected" in expect:
        assert out["rejected"]["name"] == expect["rejected"]
        return
    split = out["split"]
    for key in ("total_fen", "deductible_fen", "fund_total_fen", "account_fen", "cash_fen"):
        assert split[key] == expect[key], key
    assert [f["rule_id"] for f in split["audit_flags"]] == expect.get("audit_flags", [])
    for key in ("basic_uncapped_fen", "basic_over_cap_fen", "institution_fen"):
        assert split[key] == expect.get(key, 0), key
    assert split["per_disease"] == expect.get("per_disease", "")
    assert {f["layer"]: f["amount_fen"] for f in split["funds"] if f["amount_fen"]} == expect["funds"]
    assert split["trace"], "the trace says which rule produced each amount"


def test_every_policy_construct_has_an_example_case() -> None:
    """docs/POLICY_LANGUAGE.md section 20: constructs 1-9, each with a case `medsettle split` runs."""
    numbers = {int(p.stem.split("-")[1]) for p in EXAMPLES if p.stem.startswith("breadth-")}
    assert numbers == set(range(1, 10))


def test_bad_case_names_the_file_and_field(tmp_path: Path) -> None:
    case = json.loads((EXAMPLES[0].parent / "chongqing-employee-outpatient.json").read_text())
    case["bill"]["lines"][0]["quantity"] = -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(case))
    result = medsettle("split", str(bad))
    assert result.returncode == 2
    assert "bad.json: bill.lines[0].quantity: -1 is out of range" in result.stderr
    assert result.stdout == ""


def test_the_table_shows_audit_flags_per_disease_and_the_cap() -> None:
    cases = EXAMPLES[0].parent
    names = (
        "audit-rules-flagged.json",
        "per-disease-appendicitis.json",
        "breadth-9-uncapped-and-over-cap.json",
    )
    result = medsettle("split", "--table", *(str(cases / n) for n in names))
    assert result.returncode == 0, result.stderr
    assert "audit DX-01 (warning) line 1: STAT is paid only for diagnoses I10, E78 [67.50]" in result.stdout
    assert "per disease appendicitis institution bears 500.00" in result.stdout
    assert "(above the annual maximum 600.00)" in result.stdout
