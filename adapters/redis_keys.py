"""The Redis keyspace, designed for Redis Cluster: every key a settlement touches atomically carries the
person's partition as its hash tag, so one Lua script can update them all in one slot. Static data
(policies, catalogs, institutions) and the card index are read-mostly and live anywhere.

    ms:{p017}:person:<person_id>          JSON: the person's static record (enrolments, approvals, ...)
    ms:{p017}:person:<person_id>:<digest> an earlier version of it that a live settlement was split with
    ms:{p017}:state:<person_id>           hash: ver (bumped by every commit), bal (personal account, fen),
                                          bal0 (the balance the core system first exported)
    ms:{p017}:year:<person_id>:<year>     hash: the person's plan-years of that year (settlement_records)
    ms:{p017}:idem:<institution>:<msgid>  hash: the message record (kind, payload hash, where the answer is);
                                          expires idempotency_retention_days after its last use
    ms:{p017}:stl:<settlement_id>         hash: the answer, inputs, contribution, money, corrections
    ms:{p017}:stream                      stream: posting events (settle, reverse, refund, adjust)
    ms:{p017}:plan-year:<year>            set: the slot's settlement ids of that plan-year: what
                                          retention removes (with their persons' year hashes) once the
                                          year leaves the window (gateway/posting/retention.py); and
                                          P:<person_id> for a person whose settlements retention by
                                          days took before, so its year hash still goes with the year
    ms:{c042}:claim:<institution>:<msgid> string: who used the message id (any person): person|kind|hash;
                                          expires with the message record it was made for
    ms:card:<digest>, ms:idno:<digest>    person id (global index); the digest is a keyed hash of the card
                                          or ID number (IndexKeys): no card or ID number in a key name
    ms:index:check                        a keyed hash of a fixed text: proves every process uses one key
    static data (policies, catalogs, institutions): rules_cache/keys.py
"""

from __future__ import annotations

import hashlib
import hmac
import zlib

PARTITIONS = 256
PERSON_CHANNEL = "ms:person:changed"


def partition_of(person_id: str) -> int:
    return zlib.crc32(person_id.encode()) % PARTITIONS


def tag(partition: int) -> str:
    return f"ms:{{p{partition:03d}}}"


def person_key(person_id: str) -> str:
    return f"{tag(partition_of(person_id))}:person:{person_id}"


def state_key(person_id: str) -> str:
    return f"{tag(partition_of(person_id))}:state:{person_id}"


def person_version_key(person_id: str, digest: str) -> str:
    return f"{tag(partition_of(person_id))}:person:{person_id}:{digest}"


def year_key(person_id: str, year: int) -> str:
    return f"{tag(partition_of(person_id))}:year:{person_id}:{year}"


def claim_key(institution: str, message_id: str) -> str:
    """An institution's message id is one idempotency key across every person, so its claim cannot live
    in a person's slot; spread over 256 slots of its own by (institution, message id)."""
    slot = zlib.crc32(f"{institution}|{message_id}".encode()) % PARTITIONS
    return f"ms:{{c{slot:03d}}}:claim:{institution}:{message_id}"


def idem_key(partition: int, institution: str, message_id: str) -> str:
    return f"{tag(partition)}:idem:{institution}:{message_id}"


def settlement_key(settlement_id: str) -> str:
    return f"{tag(partition_of_settlement(settlement_id))}:stl:{settlement_id}"


def settlement_prefix(partition: int) -> str:
    return f"{tag(partition)}:stl:"


def stream_key(partition: int) -> str:
    return f"{tag(partition)}:stream"


def plan_year_index_key(partition: int, year: int) -> str:
    return f"{tag(partition)}:plan-year:{year}"


def partition_of_settlement(settlement_id: str) -> int:
    """Settlement ids start with S and the three-digit partition: S017-..."""
    if len(settlement_id) < 5 or settlement_id[0] != "S" or not settlement_id[1:4].isdigit():
        raise ValueError(f"not a settlement id: {settlement_id!r}")
    return int(settlement_id[1:4])


INDEX_CHECK = "ms:index:check"
DIGEST_HEX_LEN = 32  # 128 bits of HMAC-SHA256: no collision among a nation's cards


class IndexKeys:
    """Card and ID numbers never appear in key names (nor in the pub/sub notices or the in-process
    caches): each is an HMAC-SHA256 under the deployment's index key, a secret kept apart from Redis, so
    a copy of the keyspace or of a backup names no card. Every process of a deployment must use the same
    key; `check_value` is written to Redis by the first and compared by every other."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("an index key has at least 16 bytes")
        self._secret = secret

    def digest(self, kind: str, value: str) -> str:
        mac = hmac.new(self._secret, f"{kind}:{value}".encode(), hashlib.sha256)
        return mac.hexdigest()[:DIGEST_HEX_LEN]

    def card(self, card_no: str) -> str:
        return f"ms:card:{self.digest('card', card_no)}"

    def id_number(self, id_number: str) -> str:
        return f"ms:idno:{self.digest('idno', id_number)}"

    def lookup(self, card_no: str | None, id_number: str | None) -> str:
        """The key under which a person id is found: the in-process cache's key too."""
        return self.card(card_no) if card_no else self.id_number(id_number or "")

    @property
    def check_value(self) -> str:
        return self.digest("check", "medsettle index key")


def is_digest(suffix: str) -> bool:
    return len(suffix) == DIGEST_HEX_LEN and all(c in "0123456789abcdef" for c in suffix)
