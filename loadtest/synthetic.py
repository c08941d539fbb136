"""Synthetic persons for load tests and benchmarks: many Chongqing employees with large personal
accounts, so runs are not limited by one person's lock or an exhausted account. Deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from gateway.demo import INPATIENT_LINES as DEMO_INPATIENT_LINES

DISTRICTS = ("500103", "500104", "500105", "500106", "500107", "500108", "500109", "500112", "500113")

# Load across the seed cities: region -> (districts, employee tier, resident tiers, hospital, pharmacy)
CITIES = {
    "500000": (DISTRICTS, 1, (1, 2), "H50010300001", "P50010300001"),
    "320900": (("320902", "320903", "320921"), 1, (1,), "H32090200001", "P32090200001"),
    "512000": (("512002", "512021", "512022"), 1, (3, 4), "H51200200001", "P51200200001"),
    "370100": (("370102", "370103", "370104"), 1, (1,), "H37010200001", "P37010200001"),
}
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 5, 8, 4, 2, 1, 7, 9)  # ISO 7064 MOD 11-2
CHECK = "10X98765432"


def id_number(district: str, birth: str, seq: int) -> str:
    body = f"{district}{birth}{seq:03d}"
    return body + CHECK[sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11]


def record(
    i: int, prefix: str, region: str, district: str, birth: str, employee: bool, tier: int, balance_fen: int
) -> dict[str, Any]:
    """One person as the core system exports it (citydata/README.md)."""
    person_type = ("retiree" if birth < "1966" else "in_service") if employee else "adult"
    return {
        "person_id": f"PSN{prefix}{i:08d}",
        "name": "测试" + "甲乙丙丁戊己庚辛"[i % 8],
        "id_number": id_number(district, birth, i % 1000),
        "card_no": f"{prefix[0]}{i:08d}",
        "card_status": "normal",
        "sex": "MF"[i % 2],
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
        "tags": [],
        "enrolments": [
            {
                "region": region, "district": district, "scheme": "employee" if employee else "resident",
                "person_type": person_type, "status": "active", "valid_from": "2020-01-01", "valid_to": None,
                "tiers": [{"tier": tier, "applied_on": "2020-01-01"}],
            }
        ],
        "approvals": [],
        "special_diseases": [],
        "account_balance_fen": balance_fen,
        "accumulators": {"year": 2026, "values": {}},
    }  # fmt: skip


def birth_date(rng: random.Random, latest_year: int) -> str:
    return f"{rng.randint(1950, latest_year)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def persons(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Chongqing employees with large accounts (cards L00000000...), for the gateway benchmarks."""
    rng = random.Random(seed)
    return [
        record(
            i, "LT", "500000", DISTRICTS[i % len(DISTRICTS)], birth_date(rng, 2000), True, 1, 1_000_000_000
        )
        for i in range(count)
    ]


def city_persons(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Employees and residents spread over the four seed cities (cards C00000000...), for Locust."""
    rng = random.Random(seed)
    regions = sorted(CITIES)
    out = []
    for i in range(count):
        region = regions[i % len(regions)]
        districts, employee_tier, resident_tiers, _, _ = CITIES[region]
        employee = (i // len(regions)) % 3 != 2  # two employees for each resident
        tier = employee_tier if employee else resident_tiers[i % len(resident_tiers)]
        district = districts[(i // len(regions)) % len(districts)]
        out.append(record(i, "CT", region, district, birth_date(rng, 2005), employee, tier,
                          500_000_000 if employee else 0))  # fmt: skip
    return out


def write_persons(path: Path, count: int, across_cities: bool = False) -> Path:
    people = city_persons(count) if across_cities else persons(count)
    path.write_text(json.dumps(people, ensure_ascii=False), encoding="utf-8")
    return path


INPATIENT_LINES = DEMO_INPATIENT_LINES  # the demo's five-day stay
PHARMACY_LINES = [("D000001", 1250, 2), ("D000009", 1450, 1), ("D000012", 2350, 1)]


OUTPATIENT_10_LINES = [  # a 10-line outpatient bill from the demo catalog: A and B items and drugs
    ("T000001", 1000, 1),
    ("T000006", 2000, 1),
    ("T000007", 1000, 1),
    ("T000009", 6000, 1),
    ("T000003", 3500, 1),
    ("D000012", 2350, 2),
    ("D000011", 1680, 2),
    ("D000015", 650, 3),
    ("M000002", 80, 5),
    ("D000019", 890, 2),
]
