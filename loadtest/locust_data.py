"""Writes the Locust persons (four seed cities, cards C00000000...) as JSON to stdout or a file:
.venv/bin/python -m loadtest.locust_data 4000 > persons.json"""

from __future__ import annotations

import json
import sys

from loadtest.synthetic import city_persons

if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    json.dump(city_persons(count), sys.stdout, ensure_ascii=False)
