"""One PKI per benchmark run, made with the gateway's own development PKI code (gateway.edge.certs, what
`medsettle certs` runs) in a folder the caller owns (a temporary one): a CA, a server certificate for
localhost / 127.0.0.1 / ::1, the readiness probe's certificate and one client certificate per
institution the load acts for, each naming it in a SAN URI `urn:medsettle:institution:<code>` as the
gateway's identity check requires (docs/SECURITY.md). Never for production, never committed.

The same server files go to the bare server and to `medsettle serve`, so a TLS floor and the gateway
are compared with the same certificates, key type (EC P-256) and handshake."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.edge import certs
from gateway.edge.tls import ClientTls
from loadtest import loadgen

SERVER_NAME = "localhost"  # a name the server certificate always carries (certs.DEFAULT_HOSTS)


@dataclass(frozen=True, slots=True)
class BenchPki:
    """A folder laid out by `medsettle certs` (certs.Layout), with the files the load tools use."""

    root: Path
    server_name: str = SERVER_NAME

    @property
    def layout(self) -> certs.Layout:
        return certs.Layout(self.root)

    def bare_server_flags(self) -> list[str]:
        """loadtest.bare_server's options: mutual TLS with the gateway's server files and client CA."""
        layout = self.layout
        return ["--tls-cert", str(layout.server_cert), "--tls-key", str(layout.server_key),
                "--tls-ca", str(layout.ca_cert)]  # fmt: skip

    def serve_flags(self) -> list[str]:
        """`medsettle serve` options: the same files as the bare server's, and the probe certificate its
        readiness check presents (explicit --tls-* files need it named)."""
        layout = self.layout
        return ["--tls-cert", str(layout.server_cert), "--tls-key", str(layout.server_key),
                "--tls-client-ca", str(layout.ca_cert), "--probe-cert", str(layout.probe_cert),
                "--probe-key", str(layout.probe_key)]  # fmt: skip

    def loadgen_tls(self, institution: str) -> loadgen.ClientTls:
        """The C load generator acting for `institution`."""
        layout = self.layout
        return loadgen.ClientTls(
            layout.ca_cert, layout.client_cert(institution), layout.client_key(institution), self.server_name
        )

    def grpc_tls(self, institution: str) -> ClientTls:
        """A grpc.aio client (gateway.edge.tls.channel) acting for `institution`."""
        return ClientTls.for_institution(self.root, institution)

    def missing(self, institutions: Iterable[str]) -> list[Path]:
        """Files the load tools need that are not in the folder (a --certs folder given by the user)."""
        layout = self.layout
        needed = [layout.ca_cert, layout.server_cert, layout.server_key, layout.probe_cert, layout.probe_key]
        for code in institutions:
            needed += [layout.client_cert(code), layout.client_key(code)]
        return [path for path in needed if not path.exists()]


def make_pki(folder: Path, institutions: Iterable[str]) -> BenchPki:
    """Creates the CA, the server and probe certificates and one client certificate per institution in
    `folder` (created, mode 0700; keys 0600). Takes well under a second: EC keys."""
    layout = certs.Layout(folder)
    if layout.ca_cert.exists():  # ensure_pki would keep it: a run's PKI is made fresh, never reused
        raise FileExistsError(f"{layout.ca_cert}: a benchmark PKI is made in a new folder")
    certs.ensure_pki(folder, None)  # the CA, the server (localhost, 127.0.0.1, ::1) and the probe
    for code in institutions:
        certs.issue_client(layout, code, f"medsettle load generator for {code}")
    return BenchPki(folder)
