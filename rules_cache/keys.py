"""Where static data lives in Redis. Policies, catalogs and institutions are read-mostly and versioned:
a published version is an immutable blob under its own key, and one pointer hash says which versions are
current. They may live in any slot of a cluster (nothing settles atomically with them).

    ms:static:current                    hash: policy:<region>, catalog:<region>, institutions -> version
    ms:static:<kind>:<region>:<version>  immutable blob of one published version
    ms:static:changed                    pub/sub channel: a publication happened
"""

from __future__ import annotations

STATIC_POINTER = "ms:static:current"
STATIC_CHANNEL = "ms:static:changed"


def static_key(kind: str, region: str, version: str) -> str:
    return f"ms:static:{kind}:{region}:{version}"


def text(value: object) -> str:
    """redis-py is typed as bytes | str; these clients run with decode_responses=False (bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
