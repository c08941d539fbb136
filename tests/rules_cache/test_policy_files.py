"""Policy files load into immutable policies; a wrong file is refused with the file, the field path and
the reason, so a policy officer can fix it without reading code."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.model import Scheme, VisitType
from rules_cache.policy_files import load_policy_file, parse_policy
from rules_cache.reader import DataError

POLICIES = Path(__file__).resolve().parents[2] / "citydata" / "policies"
CHONGQING = POLICIES / "500000-chongqing.toml"


def chongqing() -> dict[str, Any]:
    return tomllib.loads(CHONGQING.read_text(encoding="utf-8"))


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(DataError) as info:
        parse_policy(data, "cq.toml")
    return str(info.value)


def test_every_shipped_policy_loads() -> None:
    versions = {load_policy_file(p).version for p in sorted(POLICIES.glob("*.toml"))}
    # Chongqing's 2027 version is published ahead: it takes over on 2027-01-01
    assert versions == {"cq-2026.1", "cq-2027.1", "yc-2026.1", "zy-2026.1", "jn-2026.1"}


def test_seed_figures_for_chongqing_residents() -> None:
    policy = load_policy_file(CHONGQING)
    tier1 = policy.plans[(Scheme.RESIDENT, 1)].benefits[VisitType.INPATIENT].basic
    tier2 = policy.plans[(Scheme.RESIDENT, 2)].benefits[VisitType.INPATIENT].basic
    assert tier1 is not None and tier2 is not None
    assert (tier1.annual_max_fen, tier2.annual_max_fen) == (7_000_000, 11_000_000)
    assert [tier1.ratio.level_add_bp[lv] for lv in (1, 2, 3)] == [8000, 6000, 4000]
    assert [tier2.ratio.level_add_bp[lv] for lv in (1, 2, 3)] == [8500, 6500, 4500]
    # tier 2 extends tier 1: it keeps tier 1's critical-illness and assistance layers
    assert [layer.name for layer in policy.plans[(Scheme.RESIDENT, 2)].layers] == [
        "critical_illness",
        "assistance",
    ]


def test_policy_is_immutable() -> None:
    policy = load_policy_file(CHONGQING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.version = "edited"  # type: ignore[misc]


def test_misspelt_key_is_refused() -> None:
    data = chongqing()
    data["plans"][0]["inpatient"]["deductible"]["stay_rul"] = "reduce"
    assert error_of(data) == "cq.toml: plans[0].inpatient.deductible: unknown field(s): stay_rul"


def test_money_must_be_integer_fen() -> None:
    data = chongqing()
    data["plans"][1]["inpatient"]["annual_max_fen"] = 70000.0
    assert "plans[1].inpatient.annual_max_fen: expected an integer" in error_of(data)


def test_ratio_above_100_percent_is_refused() -> None:
    data = chongqing()
    data["plans"][1]["inpatient"]["ratio"]["by_level"]["3"] = 14000
    assert "plans[1].inpatient.ratio.by_level.3: 14000 is out of range" in error_of(data)


def test_missing_level_is_named() -> None:
    data = chongqing()
    del data["plans"][0]["inpatient"]["deductible"]["by_level"]["2"]
    assert "plans[0].inpatient.deductible.by_level: missing level(s) [2]" in error_of(data)


def test_unknown_enum_value_lists_the_choices() -> None:
    data = chongqing()
    data["plans"][0]["inpatient"]["deductible"]["stay_rule"] = "third_off"
    assert "'third_off' is not one of: none, reduce, half_then_none" in error_of(data)


def test_bands_must_rise_and_end_open() -> None:
    data = chongqing()
    data["plans"][1]["layers"][0]["bands"] = [
        {"upto_fen": 500, "ratio_bp": 5000},
        {"upto_fen": 400, "ratio_bp": 1},
    ]
    assert "bands must rise" in error_of(data)


def test_extends_must_name_an_existing_plan() -> None:
    data = chongqing()
    data["plans"][2]["extends"] = "resident:7"
    assert "plans[2].extends: extends 'resident:7': no such plan" in error_of(data)


def test_missing_required_field() -> None:
    data = chongqing()
    del data["version"]
    assert error_of(data) == "cq.toml: version: required field missing"


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("region = \n")
    with pytest.raises(DataError, match=r"^broken\.toml: <top>: not valid TOML"):
        load_policy_file(path)


def test_duplicate_plan_is_refused() -> None:
    data = chongqing()
    data["plans"].append(dict(data["plans"][1]))
    assert "plans[3]: duplicate plan: resident tier 1 is already defined" in error_of(data)


def test_plan_tier_must_be_listed_in_tiers() -> None:
    data = chongqing()
    data["tiers"]["resident"] = [1]
    assert error_of(data) == "cq.toml: tiers: plan resident tier 2 is not listed in [tiers].resident"


def test_total_measured_bands_below_the_threshold_fall_away() -> None:
    # Measured on the total burden with a 15,000-yuan threshold, a band ending at 10,000 yuan can never
    # pay: it is dropped, so the slices never overlap and the layer never pays more than its base.
    data = chongqing()
    layer = data["plans"][1]["layers"][0]
    layer["bands_measured_on"] = "total"
    layer["bands"] = [{"upto_fen": 1_000_000, "ratio_bp": 9000}, {"ratio_bp": 5000}]
    policy = parse_policy(data, "cq.toml")
    bands = policy.plans[(Scheme.RESIDENT, 1)].layers[0].bands
    assert [(b.upto_fen, b.ratio_bp) for b in bands] == [(1_500_000, 0), (None, 5000)]
