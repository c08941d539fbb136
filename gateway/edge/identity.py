"""Who is calling: read from the client certificate the TLS handshake verified, never from the
request. The institution (and, when the certificate names one, the terminal) must match the envelope.

The certificate is parsed once (cryptography) and remembered by its PEM bytes, so a call costs a dict
lookup; the serial number is checked against the CRL on every call (revocation applies to
connections already open), and so is the expiry date (a connection can outlive its certificate)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.edge.certs import ROLE_BUREAU, ROLE_PROBE, URN_INSTITUTION, URN_ROLE, URN_TERMINAL
from gateway.edge.refusals import denied, unauthenticated

log = logging.getLogger(__name__)
IDENTITIES_CACHED_MAX = 20_000  # distinct client certificates remembered per process


@dataclass(frozen=True, slots=True)
class Identity:
    institution: str | None
    terminal: str | None
    role: str | None  # "probe": health and Ping only
    name: str  # subject CN, readable only: nothing is decided on it
    serial: int
    not_after: dt.datetime
    not_after_ts: float = 0.0  # the same as a POSIX timestamp: compared on every call

    def log_fields(self) -> dict[str, str]:
        """For the per-request log context (gateway.logs.request_fields) and the audit lines."""
        fields = {"client_cert_serial": format(self.serial, "x"), "client_cn": self.name}
        if self.institution:
            fields["client_institution"] = self.institution
        if self.terminal:
            fields["client_terminal"] = self.terminal
        if self.role:
            fields["client_role"] = self.role
        return fields


def identity_of(cert: x509.Certificate) -> Identity:
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    institutions = [u.removeprefix(URN_INSTITUTION) for u in uris if u.startswith(URN_INSTITUTION)]
    terminals = [u.removeprefix(URN_TERMINAL) for u in uris if u.startswith(URN_TERMINAL)]
    roles = [u.removeprefix(URN_ROLE) for u in uris if u.startswith(URN_ROLE)]
    if len(institutions) > 1 or len(terminals) > 1 or len(roles) > 1:
        raise unauthenticated("CERTIFICATE_AMBIGUOUS", "the client certificate names more than one identity")
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return Identity(
        institution=institutions[0] if institutions else None,
        terminal=terminals[0] if terminals else None,
        role=roles[0] if roles else None,
        name=str(cns[0].value) if cns else "",
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        not_after_ts=cert.not_valid_after_utc.timestamp(),
    )


class Revocations:
    """The serial numbers in a CRL file, reread when the file changes (checked at most once per
    `check_interval_s`). The CRL must be signed by the client CA; one that is not, or cannot be read,
    is refused and the previous list kept (a broken file must not un-revoke anyone)."""

    def __init__(self, crl: Path | None, ca: Path | None, check_interval_s: float = 1.0) -> None:
        self.crl, self.ca, self.check_interval_s = crl, ca, check_interval_s
        self.serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.crl is None or (not force and now - self._checked < self.check_interval_s):
            return
        with self._lock:
            self._checked = now
            try:
                st = self.crl.stat()
            except FileNotFoundError:
                return  # no CRL yet: nothing revoked (or what was read before)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            try:
                crl = x509.load_pem_x509_crl(self.crl.read_bytes())
                if self.ca is not None and not self._signed_by_ca(crl):
                    raise ValueError("not signed by the client CA")
            except Exception as exc:
                log.error("CRL %s not used, keeping %d revoked serials: %s", self.crl, len(self.serials), exc)
                self._stamp = stamp
                return
            self._stamp = stamp
            self.serials = frozenset(entry.serial_number for entry in crl)
            log.warning("CRL %s loaded: %d revoked certificates", self.crl, len(self.serials))

    def _signed_by_ca(self, crl: x509.CertificateRevocationList) -> bool:
        assert self.ca is not None
        for ca in x509.load_pem_x509_certificates(self.ca.read_bytes()):  # a bundle during a CA change
            key = ca.public_key()
            if (
                crl.issuer == ca.subject
                and isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
                and crl.is_signature_valid(key)
            ):
                return True
        return False

    def revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self.serials


class IdentityReader:
    """About 15 µs a call, most of it grpcio building the auth context (measured, 2-core VM)."""

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self._cache: dict[bytes, Identity] = {}  # a plain dict: a cachetools lookup costs more than the rest

    def of(self, context: Any) -> Identity:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:  # cannot happen with require_client_authentication; refuse rather than trust
            raise unauthenticated("CERTIFICATE_REQUIRED", "a client certificate is required")
        identity = self._cache.get(pem[0])
        if identity is None:
            identity = identity_of(x509.load_pem_x509_certificate(pem[0]))
            if len(self._cache) >= IDENTITIES_CACHED_MAX:  # bounded: start again rather than grow
                self._cache.clear()
            self._cache[pem[0]] = identity
        if self.revocations.revoked(identity.serial):
            raise unauthenticated("CERTIFICATE_REVOKED", f"certificate {identity.serial:x} is revoked")
        if identity.not_after_ts < time.time():
            raise unauthenticated("CERTIFICATE_EXPIRED", f"certificate {identity.serial:x} has expired")
        return identity


def authorize(identity: Identity | None, envelope: Any) -> None:
    """An institution acts only for itself; a probe only probes. None: a plaintext (--insecure) server,
    where the envelope is all there is."""
    if identity is None:
        return
    if identity.institution is None:
        raise denied("ROLE_NOT_ALLOWED", f"a {identity.role or 'client'} certificate may not call this")
    if envelope.institution_code != identity.institution:
        raise denied(
            "INSTITUTION_MISMATCH",
            f"the certificate is institution {identity.institution}'s; the envelope names"
            f" {envelope.institution_code or 'none'}",
        )
    if identity.terminal is not None and envelope.terminal_id != identity.terminal:
        raise denied(
            "TERMINAL_MISMATCH",
            f"the certificate is terminal {identity.terminal}'s; the envelope names"
            f" {envelope.terminal_id or 'none'}",
        )


def authorize_role(identity: Identity | None, role: str) -> None:
    """A route for a role (the bureau's finance office): its certificate names the role, no institution.
    None: a plaintext (--insecure) server, which trusts every caller."""
    if identity is None:
        return
    if identity.role != role:
        who = (
            f"institution {identity.institution}'s"
            if identity.institution
            else f"a {identity.role or 'client'}"
        )
        raise denied("ROLE_NOT_ALLOWED", f"{who} certificate may not call this: it needs role {role}")


__all__ = [
    "ROLE_BUREAU",
    "ROLE_PROBE",
    "Identity",
    "IdentityReader",
    "Revocations",
    "authorize",
    "authorize_role",
    "identity_of",
]
