"""A typed walk over parsed TOML/JSON/CSV data that names the file and the field path in every error,
and rejects unknown keys (a misspelt key in a policy must not be silently ignored)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class DataError(ValueError):
    """Bad input data: `source` (a file), `path` (the field) and `reason`."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {path or '<top>'}: {reason}")
        self.source = source
        self.path = path
        self.reason = reason


class Reader:
    def __init__(self, data: Any, source: str, path: str = "") -> None:
        self.source = source
        self.path = path
        if not isinstance(data, Mapping):
            raise self.error("expected a table")
        self.data: Mapping[str, Any] = data
        self.seen: set[str] = set()

    def error(self, reason: str, key: str | None = None) -> DataError:
        return DataError(self.source, self.at(key) if key else self.path, reason)

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            raise self.error("required field missing", key)
        return self.data[key]

    def text(self, key: str, default: str | None = None) -> str:
        if default is not None and key not in self.data:
            self.seen.add(key)
            return default
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise self.error(f"expected a non-empty string, got {value!r}", key)
        return value

    def integer(
        self, key: str, default: int | None = None, minimum: int = 0, maximum: int | None = None
    ) -> int:
        if default is not None and key not in self.data:
            self.seen.add(key)
            return default
        return self.check_int(self.raw(key), key, minimum, maximum)

    def opt_int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        self.seen.add(key)
        if key not in self.data:
            return None
        return self.check_int(self.data[key], key, minimum, maximum)

    def check_int(self, value: Any, key: str, minimum: int, maximum: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                f"expected an integer (money in fen, ratios in basis points), got {value!r}", key
            )
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.error(f"{value} is out of range: must be {bound}", key)
        return value

    def bp(self, key: str, default: int | None = None, maximum: int = 10_000) -> int:
        return self.integer(key, default, 0, maximum)

    def flag(self, key: str, default: bool) -> bool:
        self.seen.add(key)
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}", key)
        return value

    def day(self, key: str) -> date:
        value = self.raw(key)
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(value)
        except (TypeError, ValueError):
            raise self.error(f"expected a date YYYY-MM-DD, got {value!r}", key) from None

    def opt_day(self, key: str) -> date | None:
        self.seen.add(key)
        if self.data.get(key) in (None, ""):
            return None
        return self.day(key)

    def enum(self, key: str, kind: type[E], default: E | None = None) -> E:
        if default is not None and key not in self.data:
            self.seen.add(key)
            return default
        return self.to_enum(self.raw(key), kind, key)

    def to_enum(self, value: Any, kind: type[E], key: str) -> E:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in kind)
            raise self.error(f"{value!r} is not one of: {allowed}", key) from None

    def enums(self, key: str, kind: type[E], default: tuple[E, ...] = ()) -> frozenset[E]:
        self.seen.add(key)
        values = self.data.get(key, list(default))
        if not isinstance(values, list):
            raise self.error("expected a list", key)
        return frozenset(self.to_enum(v, kind, f"{key}[{i}]") for i, v in enumerate(values))

    def strs(self, key: str) -> tuple[str, ...]:
        self.seen.add(key)
        values = self.data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise self.error("expected a list of strings", key)
        return tuple(values)

    def table(self, key: str) -> Reader:
        return Reader(self.raw(key), self.source, self.at(key))

    def opt_table(self, key: str) -> Reader | None:
        self.seen.add(key)
        return self.table(key) if key in self.data else None

    def tables(self, key: str) -> Iterator[Reader]:
        self.seen.add(key)
        values = self.data.get(key, [])
        if not isinstance(values, list):
            raise self.error("expected a list of tables", key)
        for i, value in enumerate(values):
            yield Reader(value, self.source, f"{self.at(key)}[{i}]")

    def int_map(self, key: str, minimum: int = 0, maximum: int | None = None) -> dict[str, int]:
        table = self.table(key)
        return {k: table.integer(k, minimum=minimum, maximum=maximum) for k in table.data}

    def done(self) -> None:
        """Raise on any key nobody asked for."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(f"unknown field(s): {', '.join(unknown)}")
