"""Server and client TLS credentials, grpcio's own. The server requires a client certificate signed by
the configured CA (a missing, foreign or expired one is refused at the handshake) and picks up a new
server certificate, key or CA bundle without a restart: grpcio asks the fetcher below at every new
handshake, and the fetcher rereads the files when their modification times change (checked at most
once per `reload_check_interval_ms`). Connections already open keep the keys they were made with."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway.edge.certs import ROLE_PROBE, Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert: Path  # PEM chain, leaf first
    key: Path  # PEM private key, mode 0600
    client_ca: Path  # PEM bundle of the CAs whose client certificates are accepted (two during a CA change)
    crl: Path | None = None  # PEM CRL of that CA; reread while serving (revocation without restart)
    reload_check_interval_ms: int = 1000

    @classmethod
    def from_dir(cls, root: Path) -> ServerTls:
        layout = Layout(root)
        return cls(layout.server_cert, layout.server_key, layout.ca_cert, layout.crl)


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


class ReloadingServerCredentials:
    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._files = (tls.cert, tls.key, tls.client_ca)
        self._stamp = _stamp(self._files)
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # the fetcher runs on grpc's threads
        self.reloads = 0

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.tls.key.read_bytes(), self.tls.cert.read_bytes())], self.tls.client_ca.read_bytes()
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """None: keep what is in use. Never raises: a half-written or broken file keeps the old keys
        (and says so in the log) rather than refusing every new connection."""
        now = time.monotonic()
        if now - self._checked < self.tls.reload_check_interval_ms / 1000:
            return None
        with self._lock:
            self._checked = now
            stamp = _stamp(self._files)
            if stamp == self._stamp:
                return None
            try:
                config = self.configuration()
            except Exception as exc:
                log.error("TLS files changed but could not be loaded; keeping the old ones: %s", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            log.warning("TLS certificate, key or client CA reloaded from %s", self.tls.cert.parent)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), self.fetch, require_client_authentication=True
        )


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None  # when the address is not a name in the server's certificate

    @classmethod
    def for_institution(cls, root: Path, name: str) -> ClientTls:
        layout = Layout(root)
        return cls(layout.ca_cert, layout.client_cert(name), layout.client_key(name))

    @classmethod
    def probe(cls, root: Path) -> ClientTls:
        return cls.for_institution(root, ROLE_PROBE)

    def credentials(self) -> grpc.ChannelCredentials:
        for path in (self.ca, self.cert, self.key):
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such certificate file (medsettle certs creates them)")
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def channel(
    target: str, tls: ClientTls | None, options: list[tuple[str, object]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel: mTLS with `tls`, plaintext with None (a gateway started with --insecure)."""
    opts: list[tuple[str, object]] = [*(options or [])]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*opts, *tls.options()])
