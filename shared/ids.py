"""Message identifiers: ULIDs (time-ordered, 26 Crockford base32 chars).

Time-ordered ids make logs and traces sort naturally; 80 random bits make
collisions irrelevant. `now_ms` is injected so tests are deterministic.
One id is made per message, so encoding goes 10 bits (two characters) at a
time through a lookup table.
"""

from __future__ import annotations

import random

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # index: 10-bit value


def new_ulid(now_ms: int) -> str:
    """A ULID for the given Unix time in milliseconds."""
    # Uniqueness, not secrecy: the PRNG (reseeded after fork) spares a syscall per id.
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80 | random.getrandbits(80)
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in range(120, -1, -10)])
