"""A development PKI on the `cryptography` package: a CA, a server certificate, one client certificate
per institution of the registry and one for health probes, and a CRL for revocation.

Identity lives in the subject alternative names, as URIs (docs/SECURITY.md):
    urn:medsettle:institution:<code>   the institution the holder acts for (exactly one)
    urn:medsettle:terminal:<id>        optional: the one terminal id the holder may use
    urn:medsettle:role:probe           a health probe: Health and Ping only, no institution
The subject CN carries a readable name (the institution's name); nothing is decided on it.

Private keys are written with mode 0600 through a temporary file renamed into place, so a reader never
sees a half-written key and a rotation is atomic."""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.secret_files import write_private

URN_INSTITUTION = "urn:medsettle:institution:"
URN_TERMINAL = "urn:medsettle:terminal:"
URN_ROLE = "urn:medsettle:role:"
ROLE_PROBE = "probe"
ROLE_BUREAU = "bureau"  # the bureau's finance office: clearing and fund spend of every institution
CA_DAYS = 3650
LEAF_DAYS = 397  # what public CAs may issue at most; rotate well before
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Layout:
    """Where `medsettle certs` puts things. Only *.key files are secret."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def crl(self) -> Path:
        return self.root / "revoked.crl"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.key"

    @property
    def probe_cert(self) -> Path:
        return self.client_cert(ROLE_PROBE)

    @property
    def probe_key(self) -> Path:
        return self.client_key(ROLE_PROBE)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())  # fast to make, small handshakes, grpc-supported


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> Key:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MedSettle"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def create_ca(layout: Layout, days: int = CA_DAYS) -> None:
    key = new_key()
    name = _name("MedSettle development CA", "ca")
    start = now_utc() - dt.timedelta(minutes=5)  # a little clock skew between hosts
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(layout.ca_key, key_pem(key))
    write_public(layout.ca_cert, cert_pem(cert))


def _issue(
    layout: Layout,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
    days: int,
    not_before: dt.datetime | None,
) -> x509.Certificate:
    ca_key, ca_cert = load_key(layout.ca_key), load_cert(layout.ca_cert)
    key = new_key()
    start = not_before or now_utc() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert_pem(cert))
    return cert


def host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server(
    layout: Layout, hosts: Iterable[str] = (), days: int = LEAF_DAYS, out: Path | None = None
) -> x509.Certificate:
    """The gateway's certificate: localhost and the loopback addresses always, and every --host name.
    `out` writes it elsewhere (out.crt, out.key), for a rotation that swaps files in one step."""
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    cert_path, key_path = (
        (layout.server_cert, layout.server_key)
        if out is None
        else (out.with_suffix(".crt"), out.with_suffix(".key"))
    )
    return _issue(
        layout, _name(names[0] if hosts else "medsettle gateway", "gateway"), [host_name(h) for h in names],
        ExtendedKeyUsageOID.SERVER_AUTH, cert_path, key_path, days, None,
    )  # fmt: skip


def issue_client(
    layout: Layout,
    institution: str | None,
    common_name: str,
    terminal: str | None = None,
    role: str | None = None,
    file_name: str | None = None,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A terminal's (or a probe's) certificate, written to clients/<file_name>.crt and .key."""
    sans: list[x509.GeneralName] = []
    if institution:
        sans.append(x509.UniformResourceIdentifier(URN_INSTITUTION + institution))
    if terminal:
        sans.append(x509.UniformResourceIdentifier(URN_TERMINAL + terminal))
    if role:
        sans.append(x509.UniformResourceIdentifier(URN_ROLE + role))
    if not sans:
        raise ValueError("a client certificate names an institution or a role")
    name = file_name or "-".join(p for p in (institution or role, terminal) if p)
    return _issue(
        layout, _name(common_name, "terminal" if institution else role or "client"), sans,
        ExtendedKeyUsageOID.CLIENT_AUTH, layout.client_cert(name), layout.client_key(name), days, not_before,
    )  # fmt: skip


def registry(path: Path) -> list[tuple[str, str]]:
    """(code, name) of every institution in an institutions CSV (citydata/institutions.csv format)."""
    with path.open(encoding="utf-8", newline="") as f:
        return [(row["code"], row.get("name") or row["code"]) for row in csv.DictReader(f)]


def revoke(layout: Layout, certificates: Iterable[Path], days: int = 30) -> list[int]:
    """Adds the certificates' serial numbers to the CA's CRL (revoked.crl) and signs it again. The
    gateway rereads the file within a second (no restart); returns every revoked serial."""
    ca_key, ca_cert = load_key(layout.ca_key), load_cert(layout.ca_cert)
    revoked: dict[int, dt.datetime] = {}
    if layout.crl.exists():
        for entry in x509.load_pem_x509_crl(layout.crl.read_bytes()):
            revoked[entry.serial_number] = entry.revocation_date_utc
    for path in certificates:
        revoked.setdefault(load_cert(path).serial_number, now_utc())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now_utc() - dt.timedelta(minutes=5))
        .next_update(now_utc() + dt.timedelta(days=days))
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    write_public(layout.crl, crl.public_bytes(serialization.Encoding.PEM))
    return sorted(revoked)


def ensure_pki(root: Path, institutions: Path | None, hosts: Iterable[str] = ()) -> list[str]:
    """Creates what is missing: the CA, the server certificate, the probe's, the bureau finance office's
    and one per institution.
    Nothing that exists is replaced (a restart keeps the terminals' certificates valid). Returns what
    was created."""
    layout = Layout(root)
    created = []
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    if not layout.ca_cert.exists() or not layout.ca_key.exists():
        create_ca(layout)
        created.append("ca")
    if not layout.server_cert.exists() or not layout.server_key.exists():
        issue_server(layout, hosts)
        created.append("server")
    if not layout.probe_cert.exists():
        issue_client(layout, None, "medsettle health probe", role=ROLE_PROBE)
        created.append(ROLE_PROBE)
    if not layout.client_cert(ROLE_BUREAU).exists():
        issue_client(layout, None, "medsettle bureau finance office", role=ROLE_BUREAU)
        created.append(ROLE_BUREAU)
    for code, name in registry(institutions) if institutions else []:
        if not layout.client_cert(code).exists():
            issue_client(layout, code, name)
            created.append(code)
    return created
