"""Structured logs: one JSON object per line. Every request gets one line (request id, RPC, institution,
message id, settlement id, outcome, latency); every committed settlement and reversal gets one line in
the audit log. ID numbers, card numbers and names are masked in every line, whatever logged them, and
so are passwords in URLs.

The audit log is written by several processes at once (serve --workers N), each appending whole lines
(O_APPEND). It is rotated by one party only, the serve supervisor (AuditRotator: at a size or at
midnight), by renaming the file; each writer's WatchedFileHandler notices the rename before its next
line and reopens the path. A line is written either to the file just renamed or to the new one, never
lost. With an external tool (logrotate), use its rename mode (`create`, never `copytruncate`)."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from adapters.secret_files import mask_urls_in

REQUEST_LOG = logging.getLogger("medsettle.request")
AUDIT_LOG = logging.getLogger("medsettle.audit")

# the request being served: fields the service adds as it learns them (settlement id ...)
request_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request_fields", default=None
)

ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8}(\d{3}[0-9Xx])(?![0-9A-Za-z])")  # 18-digit resident ID
CARD_NUMBER = re.compile(r"(?<![0-9A-Za-z])([A-Z])\d{6}(\d{2})(?![0-9A-Za-z])")  # social security card
NAME_KEYS = frozenset({"name", "masked_name", "person_name"})


# both patterns hold eight digits in a row: a string without them (nearly every field of a line) needs
# neither substitution, and one search is cheaper than two
MAYBE_NUMBER = re.compile(r"\d{8}")


def mask_text(text: str) -> str:
    if "://" in text:
        text = mask_urls_in(text)
    if MAYBE_NUMBER.search(text) is None:
        return text
    text = ID_NUMBER.sub(lambda m: f"{m.group(1)}********{m.group(2)}", text)
    return CARD_NUMBER.sub(lambda m: f"{m.group(1)}******{m.group(2)}", text)


def mask_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if key in NAME_KEYS and value:
            return value[:1] + "*" * (len(value) - 1)
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_value(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(key, v) for v in value]
    return value


STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # orjson: the same compact UTF-8 JSON as json.dumps(ensure_ascii=False, separators=(",", ":")),
        # several times faster; one line per settlement in the audit log is on the hot path
        return orjson.dumps(mask_value("", line), default=str).decode()


def note(**fields: Any) -> None:
    """Add fields to the current request's log line (no-op outside a request)."""
    current = request_fields.get()
    if current is not None:
        current.update(fields)


IDENTITY_FIELDS = ("client_cert_serial", "client_institution", "client_terminal", "client_cn", "client_role")


def caller_identity() -> dict[str, Any]:
    """The verified client certificate of the request being served (serial, institution, terminal, CN),
    as the edge put it into request_fields: for the service layer's audit lines. Empty on a plaintext
    server or outside a request."""
    current = request_fields.get()
    if not current:
        return {}
    return {k: current[k] for k in IDENTITY_FIELDS if k in current}


class AuditRotator:
    """Rotates the audit log by renaming it (audit-<stamp>.log beside it) once it reaches `bytes_max` or
    the day (in `timezone`) changes. Only the serve supervisor calls it; the writers reopen by themselves
    (WatchedFileHandler). Rotated files are kept: an audit trail is archived, not deleted, here."""

    def __init__(self, path: Path, bytes_max: int, timezone: str = "Asia/Shanghai") -> None:
        self.path = path
        self.bytes_max = bytes_max
        self.zone = ZoneInfo(timezone)
        self.day = datetime.now(self.zone).date()

    def maybe_rotate(self) -> Path | None:
        today = datetime.now(self.zone).date()
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self.day = today
            return None
        if size == 0 or not (today != self.day or (self.bytes_max and size >= self.bytes_max)):
            return None
        stamp = datetime.now(self.zone).strftime("%Y%m%d-%H%M%S-%f")
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        os.rename(self.path, target)  # atomic: writers keep appending to the renamed file until they reopen
        self.day = today
        return target


def configure(level: str = "INFO", audit_path: Path | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if audit_path is not None:
        audit_path.parent.mkdir(parents=True, exist_ok=True)
        # reopens the path when the supervisor has renamed it (one stat per line: about a microsecond)
        audit = logging.handlers.WatchedFileHandler(audit_path, encoding="utf-8")
        audit.setFormatter(JsonFormatter())
        # Written in the request's own thread: a QueueListener thread was measured to cost about 400 µs
        # more per settlement (GIL hand-offs) than the write it moved off the event loop.
        AUDIT_LOG.handlers[:] = [audit]
        AUDIT_LOG.setLevel(logging.INFO)  # whatever the console level: the audit log is always written
        AUDIT_LOG.propagate = False
