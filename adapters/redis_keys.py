"""The Redis keyspace, designed for Redis Cluster: every key a settlement touches atomically carries the
person's partition as its hash tag, so one Lua script can update them all in one slot. Static data
(policies, catalogs, institutions) and the card index are read-mostly and live anywhere.

    ms:{p017}:person:<person_id>         JSON: the person's static record (enrolments, approvals, ...)
    ms:{p017}:state:<person_id>          hash: ver (bumped by every commit), bal (personal account, fen)
    ms:{p017}:acc:<person_id>:<year>     hash: accumulator name -> fen (or count), for that year
    ms:{p017}:idem:<institution>:<msgid> hash: h (payload hash), kind, sid, resp (response bytes)
    ms:{p017}:stl:<settlement_id>        hash: resp, status, rev, pid, year, debit, inst, msgid, d:<acc>...
    ms:{p017}:stream                     stream: settle / reverse events for the posting worker
    ms:card:<card_no>, ms:idno:<id>      person id (global index)
    static data (policies, catalogs, institutions): rules_cache/keys.py
"""

from __future__ import annotations

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


def acc_key(person_id: str, year: int) -> str:
    return f"{tag(partition_of(person_id))}:acc:{person_id}:{year}"


def idem_key(partition: int, institution: str, message_id: str) -> str:
    return f"{tag(partition)}:idem:{institution}:{message_id}"


def settlement_key(settlement_id: str) -> str:
    return f"{tag(partition_of_settlement(settlement_id))}:stl:{settlement_id}"


def stream_key(partition: int) -> str:
    return f"{tag(partition)}:stream"


def partition_of_settlement(settlement_id: str) -> int:
    """Settlement ids start with S and the three-digit partition: S017-..."""
    if len(settlement_id) < 5 or settlement_id[0] != "S" or not settlement_id[1:4].isdigit():
        raise ValueError(f"not a settlement id: {settlement_id!r}")
    return int(settlement_id[1:4])


def card_key(card_no: str) -> str:
    return f"ms:card:{card_no}"


def id_number_key(id_number: str) -> str:
    return f"ms:idno:{id_number}"
