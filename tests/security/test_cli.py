"""The commands a new user types: `medsettle certs` makes a PKI with private keys mode 0600 that git
ignores, `medsettle health` speaks mTLS with the probe certificate, `serve --insecure` says loudly what it
is doing, and a bad --limit is refused before anything starts."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from gateway.edge import certs
from gateway.server import Gateway

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]


def medsettle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def test_certs_for_a_new_user(tmp_path: Path) -> None:
    root = tmp_path / "certs"
    made = medsettle("certs", "init", "--dir", str(root), "--host", "gw.example.org", "--host", "10.1.2.3")
    assert made.returncode == 0, made.stderr
    layout = certs.Layout(root)
    keys = [layout.ca_key, layout.server_key, *sorted((root / "clients").glob("*.key"))]
    assert (
        len(keys) == 2 + 45 + 2
    )  # CA, server, every institution of citydata/institutions.csv, probe, bureau
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "gw.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    again = medsettle("certs", "init", "--dir", str(root))
    assert "nothing (all present)" in again.stdout  # a second run keeps every certificate
    issued = medsettle(
        "certs", "issue", "--dir", str(root), "--institution", "H50010300001", "--terminal", "T-07"
    )
    assert issued.returncode == 0 and layout.client_cert("H50010300001-T-07").exists()
    revoked = medsettle("certs", "revoke", "--dir", str(root), str(layout.client_cert("H50010300001-T-07")))
    assert revoked.returncode == 0 and "1 revoked" in revoked.stdout
    paths = ["medsettle-data/certs/ca.key", "x/clients/a.key", "x/server.crt", "x/revoked.crl", "d/secrets/p"]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert ignored.stdout.split() == paths, "keys, certificates and passwords are never committed"


@pytest.mark.asyncio
async def test_health_speaks_mtls_with_the_probe_certificate(tls_gateway: Gateway, pki: Path) -> None:
    async def health(*extra: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "health", "--target", f"127.0.0.1:{tls_gateway.port}", *extra,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    assert await health("--certs", str(pki)) == (0, f"127.0.0.1:{tls_gateway.port}: SERVING\n")
    code, out = await health("--insecure")  # plaintext against a TLS gateway: refused
    assert code == 1 and "UNAVAILABLE" in out


@pytest.mark.slow
def test_serve_insecure_warns_and_still_runs_the_demo(tmp_path: Path) -> None:
    result = medsettle(
        "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--insecure", "--demo",
        "--exit-after-demo", "--workers", "1", "--no-worker", "--metrics-port", "-1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "WARNING: --insecure: plaintext gRPC" in result.stdout and "gRPC over PLAINTEXT" in result.stdout
    assert "== demo passed" in result.stdout
    assert not (tmp_path / "certs").exists(), "no PKI is made for a plaintext gateway"


def test_an_unknown_limit_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = medsettle("serve", "--data-dir", str(tmp_path), "--limit", "requests_per_hour=5")
    assert result.returncode != 0 and "known limits are" in result.stderr
    assert not (tmp_path / "redis").exists()
