"""The C load generator (loadgen.c beside this file): built here with the system compiler, run as a
subprocess, its one JSON line read back as a Result.

The build installs nothing: it needs `cc` and the libnghttp2 and OpenSSL headers (Debian: `gcc`,
`libnghttp2-dev`, `libssl-dev`; .ci/run installs libnghttp2-dev when it can). The binary goes into
`.bench-build/` at the top of the checkout (ignored by git through its own .gitignore), named after a
hash of the source and the flags, so an edited loadgen.c is rebuilt and an unchanged one is not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

SOURCE = Path(__file__).resolve().with_name("loadgen.c")
ROOT = SOURCE.parents[2]
BUILD_DIR = ROOT / ".bench-build"
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")
LIBS = ("-lnghttp2", "-lssl", "-lcrypto")
# what a missing header means, in terms of the Debian package that brings it
HEADER_PACKAGES = {"nghttp2/nghttp2.h": "libnghttp2-dev", "openssl/ssl.h": "libssl-dev"}
STATUS_NAMES = {str(code.value[0]): code.name for code in grpc.StatusCode}


class LoadgenUnavailable(RuntimeError):
    """The load generator cannot be built on this machine; the message says what to install."""


def build(build_dir: Path = BUILD_DIR) -> Path:
    """The path of a loadgen binary for the current source, compiling it first if needed."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise LoadgenUnavailable("no C compiler: install one (Debian: apt-get install gcc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *CFLAGS, *LIBS)).encode()).hexdigest()[:16]
    binary = build_dir / f"loadgen-{key}"
    if binary.exists():
        return binary
    build_dir.mkdir(parents=True, exist_ok=True)
    ignore = build_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# build outputs of loadtest/loadgen: never committed\n*\n")
    # compile beside the target and rename: two test processes building at once never see half a file
    with tempfile.NamedTemporaryFile(dir=build_dir, prefix=".loadgen-", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        result = subprocess.run(
            [compiler, *CFLAGS, "-o", str(partial), str(SOURCE), *LIBS], capture_output=True, text=True
        )
        if result.returncode != 0:
            for header, package in HEADER_PACKAGES.items():
                if header in result.stderr:
                    raise LoadgenUnavailable(
                        f"{header} is missing: install {package} (Debian: apt-get install {package})"
                    )
            raise RuntimeError(f"building the load generator failed:\n{result.stderr}")
        partial.chmod(0o755)
        os.replace(partial, binary)
    finally:
        partial.unlink(missing_ok=True)
    for stale in build_dir.glob("loadgen-*"):  # builds of earlier versions of the source
        if stale != binary:
            stale.unlink(missing_ok=True)
    return binary


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS as the load generator's client: the CA that signed the server, and for mutual TLS a client
    certificate and key; server_name is the name the server certificate must carry."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def loadgen_args(self) -> list[str]:
        args = ["--tls"]
        for flag, value in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key)):
            if value is not None:
                args += [flag, str(value)]
        if self.server_name:
            args += ["--server-name", self.server_name]
        return args


@dataclass(frozen=True, slots=True)
class Result:
    """One run's report (see loadgen.c); status maps a grpc-status code, or reset / no_status /
    conn_lost / unfinished / http_<code>, to its number of calls."""

    mode: str
    sent: int
    calls: int
    ok: int
    errors: int
    unfinished: int
    seconds: float
    calls_per_s: float  # every answered call, whatever its status
    ok_per_s: float  # calls answered OK: the throughput figure
    status: dict[str, int]
    latency_ms: dict[str, float] | None
    late: int
    late_ms: float
    frames: int
    frames_exhausted: bool
    cpu_s: float
    cpu_us_per_call: float
    server_streams_max: int  # the server's SETTINGS_MAX_CONCURRENT_STREAMS (0: no connection left)
    connection_errors: int
    error: str | None

    @property
    def status_names(self) -> dict[str, int]:
        """The status counts under gRPC's names (UNIMPLEMENTED, ...)."""
        return {STATUS_NAMES.get(key, key): count for key, count in self.status.items()}

    @property
    def error_summary(self) -> str:
        """Every non-OK count, e.g. `UNIMPLEMENTED 12, conn_lost 3`; empty when there is none."""
        parts = [f"{name} {count}" for name, count in self.status_names.items() if name != "OK"]
        if self.error:
            parts.append(self.error)
        return ", ".join(parts)


class LoadgenError(RuntimeError):
    """The load generator could not run at all (bad frames file, connection refused, TLS handshake)."""


def run(
    binary: Path,
    *,
    port: int,
    path: str,
    frames: Path,
    mode: str = "closed",
    seconds: float = 2.0,
    rate_per_s: float = 0.0,
    connections: int = 8,
    streams_per_connection_max: int = 8,
    wrap: bool = False,
    responses: Path | None = None,
    tls: ClientTls | None = None,
    host: str = "127.0.0.1",
    late_ms: float = 1.0,
    drain_seconds: float = 30.0,
) -> Result:
    """Runs the load generator once and returns its report. Raises LoadgenError when it could not
    start; calls that fail once it runs are counted in the result, never raised."""
    args = [str(binary), "--host", host, "--port", str(port), "--path", path, "--frames", str(frames),
            "--mode", mode, "--seconds", str(seconds), "--connections", str(connections),
            "--streams", str(streams_per_connection_max), "--late-ms", str(late_ms),
            "--drain-seconds", str(drain_seconds)]  # fmt: skip
    if mode == "paced":
        args += ["--rate", str(rate_per_s)]
    if wrap:
        args.append("--wrap")
    if responses is not None:
        args += ["--responses", str(responses)]
    if tls is not None:
        args += tls.loadgen_args()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + drain_seconds + 60)
    lines = proc.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        report = {}
    if proc.returncode != 0 or "calls" not in report:
        reason = report.get("error") or proc.stderr.strip() or f"exit status {proc.returncode}"
        raise LoadgenError(f"loadgen {path}: {reason}")
    fields: dict[str, Any] = {name: report.get(name) for name in Result.__dataclass_fields__}
    return Result(**fields)
