"""Who sends a national message: proven by the client certificate (the same identities as the gRPC
edge), or by a signature scheme with a key per institution, and always bound to `fixmedins_code`.

Schemes are pluggable (`SCHEMES`); each reads its headers, finds the institution's key and proves the
institution or refuses naming the header:

- `x-ca` (Zhejiang): `x-ca-key` = institution code, `x-ca-signature` = ts ":" hex(HMAC-SM3(secret,
  ts "\\n" body)): covers the body.
- `x-tif` (the national gateway's paas scheme): `x-tif-paasid`, `x-tif-timestamp` (unix seconds),
  `x-tif-nonce`, `x-tif-signature` = hex(SHA-256(ts + token + nonce + ts)). It does not cover the body;
  the nonce is remembered for twice the clock window so a captured header set is not replayed.

SM3 comes from `cryptography` (PyCA, OpenSSL's SM3, already a dependency of the gateway): maintained,
constant-time HMAC comparison through `hmac.compare_digest`, and C speed; the pure-Python `gmssl`
(last release 2023) would add a dependency and cost about a millisecond per signature.

Keys live in `<data-dir>/secrets/nhsa-keys.json` (mode 0600, never committed), reread when the file
changes:
    {"H50010300001": {"sm3_secret": "...", "tif_paasid": "...", "tif_token": "..."}, ...}"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from gateway.nhsa.codes import NationalRejection, tagged
from gateway.nhsa.envelope import REJECTED, NhsaError

log = logging.getLogger(__name__)
SIGNATURE_SKEW_S_MAX = 300  # a signature's timestamp this far from the gateway's clock at most
NONCES_REMEMBERED_MAX = 200_000  # x-tif nonces kept for 2 x SIGNATURE_SKEW_S_MAX, per process
KEYS_CHECK_INTERVAL_S = 1.0


def hmac_sm3_hex(secret: bytes, message: bytes) -> str:
    mac = crypto_hmac.HMAC(secret, hashes.SM3())
    mac.update(message)
    return mac.finalize().hex()


def tif_signature(timestamp: str, token: str, nonce: str) -> str:
    return hashlib.sha256(f"{timestamp}{token}{nonce}{timestamp}".encode()).hexdigest()


def refused(header: str, why: str) -> NhsaError:
    return NhsaError(REJECTED, f"{header}: {why} {tagged(NationalRejection.SIGNATURE_REJECTED)}")


@dataclass(frozen=True, slots=True)
class InstitutionKeys:
    sm3_secret: bytes = b""
    tif_paasid: str = ""
    tif_token: str = ""


class KeyFile:
    """The per-institution keys, reread when the file's modification time or size changes. A file that
    cannot be read keeps the keys read before (and says so in the log)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.keys: dict[str, InstitutionKeys] = {}
        self.by_paasid: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < KEYS_CHECK_INTERVAL_S):
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self.keys, self.by_paasid, self._stamp = {}, {}, None
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                raw = json.loads(self.path.read_text())
                keys = {
                    str(code): InstitutionKeys(
                        str(entry.get("sm3_secret", "")).encode(),
                        str(entry.get("tif_paasid", "")),
                        str(entry.get("tif_token", "")),
                    )
                    for code, entry in raw.items()
                }
            except (OSError, ValueError, AttributeError) as exc:
                log.error("national signing keys %s not used, keeping the previous ones: %s", self.path, exc)
                return
            self.keys = keys
            self.by_paasid = {k.tif_paasid: code for code, k in keys.items() if k.tif_paasid}

    def of(self, institution: str) -> InstitutionKeys | None:
        self.refresh()
        return self.keys.get(institution)

    def institution_of_paasid(self, paasid: str) -> str | None:
        self.refresh()
        return self.by_paasid.get(paasid)


def write_key_file(path: Path, keys: Mapping[str, Mapping[str, str]]) -> None:
    """For tests and operators: the file with mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({code: dict(v) for code, v in keys.items()}, f)


Scheme = Callable[["Signatures", Mapping[str, str], bytes], str | None]


def fresh(header: str, timestamp: str, now: float) -> None:
    if not timestamp.isdigit():
        raise refused(header, "a unix time in seconds is required")
    if abs(int(timestamp) - now) > SIGNATURE_SKEW_S_MAX:
        raise refused(header, f"more than {SIGNATURE_SKEW_S_MAX} s from the gateway's clock")


def x_ca(sig: Signatures, headers: Mapping[str, str], body: bytes) -> str | None:
    institution = headers.get("x-ca-key")
    if institution is None:
        return None
    signature = headers.get("x-ca-signature", "")
    timestamp, _, mac = signature.partition(":")
    if not mac:
        raise refused("x-ca-signature", "<unix seconds>:<hex HMAC-SM3> is required")
    fresh("x-ca-signature", timestamp, sig.clock())
    keys = sig.keys.of(institution)
    if keys is None or not keys.sm3_secret:
        raise refused("x-ca-key", f"no SM3 key is configured for institution {institution}")
    expected = hmac_sm3_hex(keys.sm3_secret, timestamp.encode() + b"\n" + body)
    if not hmac.compare_digest(expected, mac.lower()):
        raise refused("x-ca-signature", "does not match the body under the institution's key")
    return institution


def x_tif(sig: Signatures, headers: Mapping[str, str], body: bytes) -> str | None:
    paasid = headers.get("x-tif-paasid")
    if paasid is None:
        return None
    timestamp, nonce = headers.get("x-tif-timestamp", ""), headers.get("x-tif-nonce", "")
    fresh("x-tif-timestamp", timestamp, sig.clock())
    if not 8 <= len(nonce) <= 64:
        raise refused("x-tif-nonce", "8 to 64 characters are required")
    institution = sig.keys.institution_of_paasid(paasid)
    keys = sig.keys.of(institution) if institution else None
    if institution is None or keys is None:
        raise refused("x-tif-paasid", f"unknown paas id {paasid}")
    expected = tif_signature(timestamp, keys.tif_token, nonce)
    if not hmac.compare_digest(expected, headers.get("x-tif-signature", "").lower()):
        raise refused("x-tif-signature", "does not match the institution's token")
    seen = (paasid, nonce)
    with sig.nonce_lock:
        if seen in sig.nonces:
            raise refused("x-tif-nonce", "already used: a replayed request")
        sig.nonces[seen] = True
    return institution


SCHEMES: dict[str, Scheme] = {"x-ca": x_ca, "x-tif": x_tif}


class Signatures:
    """The schemes in force, the key file, and what a caller without either is allowed (plaintext
    deployments started with --insecure trust the envelope, as the gRPC edge does)."""

    def __init__(
        self,
        keys: KeyFile,
        schemes: tuple[str, ...] = ("x-ca", "x-tif"),
        unsigned_allowed: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = [s for s in schemes if s not in SCHEMES]
        if unknown:
            raise ValueError(f"unknown signing schemes {unknown}; known: {sorted(SCHEMES)}")
        self.keys, self.schemes, self.unsigned_allowed, self.clock = keys, schemes, unsigned_allowed, clock
        self.nonces: cachetools.TTLCache[tuple[str, str], bool] = cachetools.TTLCache(
            NONCES_REMEMBERED_MAX, 2 * SIGNATURE_SKEW_S_MAX
        )
        self.nonce_lock = threading.Lock()

    def prove(self, certified: str | None, headers: Mapping[str, str], body: bytes, institution: str) -> str:
        """The institution the request is proven to come from, which must be `institution`
        (fixmedins_code); `certified` is the institution of a verified client certificate, if any."""
        proven = certified
        if proven is None:
            for name in self.schemes:
                proven = SCHEMES[name](self, headers, body)
                if proven is not None:
                    break
        if proven is None:
            if self.unsigned_allowed:
                return institution
            raise refused(
                "x-ca-signature", "unsigned: present a client certificate or sign with x-ca or x-tif"
            )
        if proven != institution:
            raise NhsaError(
                REJECTED,
                f"fixmedins_code: {institution} is not the institution the request is signed or certified"
                f" for ({proven}) {tagged(NationalRejection.INSTITUTION_MISMATCH)}",
            )
        return proven


def lower_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
