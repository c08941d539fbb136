"""The shipped demo data loads and means what its README says; bad rows are refused by line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.citydata_files import load_catalog, load_citydata, load_persons
from gateway.engine.model import ItemClass, ItemKind

from .test_policy_files import POLICIES

ROOT = POLICIES.parent


def test_demo_data_covers_four_cities() -> None:
    data = load_citydata(ROOT)
    assert sorted(data.policies) == sorted(data.catalogs) == ["320900", "370100", "500000", "512000"]
    for catalog in data.catalogs.values():
        entries = [e for found in catalog.periods.values() for e in found]
        assert len(entries) >= 300
        assert {e.kind for e in entries} == set(ItemKind)
        assert {e.item_class for e in entries} == set(ItemClass)
    assert {i.region for i in data.institutions.values()} == set(data.policies)
    assert len(data.persons) >= 40


def test_every_demo_person_is_enrolled_in_a_shipped_region() -> None:
    data = load_citydata(ROOT)
    for rec in data.persons.values():
        assert rec.person.enrolments[0].region in data.policies, rec.person.person_id


def test_bad_catalog_row_names_line_and_field(tmp_path: Path) -> None:
    source = (ROOT / "catalogs" / "500000.csv").read_text(encoding="utf-8").splitlines()
    source[3] = source[3].replace(",drug,A,", ",drug,Q,", 1)
    path = tmp_path / "cat.csv"
    path.write_text("\n".join(source), encoding="utf-8")
    with pytest.raises(ValueError, match=r"cat\.csv: line 4\.class: 'Q' is not one of: A, B, C"):
        load_catalog(path, "500000", "v1")


def test_duplicate_person_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "persons.json").read_text(encoding="utf-8")
    path = tmp_path / "persons.json"
    path.write_text(text.replace("PSN500000000002", "PSN500000000001"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"persons\.json: \[1\]\.person_id: duplicate person"):
        load_persons(path)
