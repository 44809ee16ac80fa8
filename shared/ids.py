"""Message identifiers: ULIDs (time-ordered, 26 Crockford base32 chars).

Time-ordered ids make logs and traces sort naturally; 80 random bits make
collisions irrelevant. `now_ms` is injected so tests are deterministic.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int) -> str:
    """A ULID for the given Unix time in milliseconds."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
