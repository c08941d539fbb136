"""The audit log: several processes append to it while it is rotated by size, and no line is lost or
doubled; the caller's certificate identity is available to the audit lines of the request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gateway import logs

WRITER = """
import sys, logging
from pathlib import Path
from gateway import logs
logs.configure("WARNING", Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    logs.AUDIT_LOG.info("settle", extra={"writer": sys.argv[2], "n": i, "pad": "x" * 200})
"""


def test_rotation_while_several_processes_write_loses_no_line(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    lines_each = 4000
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(audit), name, str(lines_each)]) for name in "ab"
    ]
    rotator = logs.AuditRotator(audit, bytes_max=64 * 1024)
    rotated = 0
    while any(w.poll() is None for w in writers):
        rotated += rotator.maybe_rotate() is not None
        time.sleep(0.005)
    assert all(w.wait() == 0 for w in writers)
    files = sorted(tmp_path.glob("audit*.log"))
    assert rotated >= 3 and len(files) == rotated + (1 if audit.exists() else 0)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for path in files:
        for line in path.read_text().splitlines():
            record = json.loads(line)  # whole lines only: nothing torn
            seen[record["writer"]].append(record["n"])
    for name in "ab":
        assert sorted(seen[name]) == list(range(lines_each)), f"writer {name}: lost or doubled lines"


def test_rotation_by_day(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    audit.write_text('{"event":"settle"}\n')
    rotator = logs.AuditRotator(audit, bytes_max=0)
    assert rotator.maybe_rotate() is None  # same day, no size limit
    rotator.day = rotator.day.replace(year=rotator.day.year - 1)  # as if the process started yesterday
    target = rotator.maybe_rotate()
    assert target is not None and target.read_text() == '{"event":"settle"}\n' and not audit.exists()


def test_the_callers_identity_is_there_for_the_audit_lines() -> None:
    assert logs.caller_identity() == {}
    token = logs.request_fields.set(
        {
            "rpc": "Settle",
            "client_cert_serial": "1f2e",
            "client_institution": "H50010300001",
            "institution": "x",
        }
    )
    try:
        assert logs.caller_identity() == {"client_cert_serial": "1f2e", "client_institution": "H50010300001"}
    finally:
        logs.request_fields.reset(token)
