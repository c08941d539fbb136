"""Throwaway certificates for TLS and mutual-TLS benchmark runs and tests: a CA, a server certificate
for localhost / 127.0.0.1 and a client certificate, made with the `openssl` command in a folder the
caller owns (a temporary one), valid for a day. Never for production, never committed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLIENT_NAME = "H50010300001"  # a client certificate names its institution, as a terminal's would


class OpensslUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_name: str = "localhost"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _signed(
    folder: Path, name: str, subject: str, extensions: str, ca: Path, ca_key: Path
) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject)  # fmt: skip
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "1", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    key.chmod(0o600)
    return cert, key


def throwaway_mtls(folder: Path) -> Certs:
    """Makes the CA, server and client certificates in `folder`."""
    if shutil.which("openssl") is None:
        raise OpensslUnavailable("the openssl command is missing (Debian: apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=medsettle-bench-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    ca_key.chmod(0o600)
    server_cert, server_key = _signed(
        folder, "server", "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", ca, ca_key,
    )  # fmt: skip
    client_cert, client_key = _signed(
        folder, "client", f"/CN={CLIENT_NAME}", "extendedKeyUsage=clientAuth\n", ca, ca_key
    )
    return Certs(ca, server_cert, server_key, client_cert, client_key)
