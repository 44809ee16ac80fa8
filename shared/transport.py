"""The one seam between the sync logic and a transport (WebSocket, QUIC, in-memory).

The daemons see only `Channel`; transport modules translate their library's
exceptions into LinkBroken / LinkClosed / AuthError at this boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Channel(Protocol):
    """An authenticated, ordered, message-oriented connection to one peer."""

    @property
    def peer(self) -> str:
        """The remote address, for logs ("203.0.113.7:51234")."""
        ...

    @property
    def node(self) -> str:
        """Cloud side: the node name from the client certificate. Edge side: ""."""
        ...

    @property
    def transport(self) -> str:
        """ "websocket" or "quic"."""
        ...

    async def recv(self) -> bytes:
        """The next frame. Raises LinkBroken if the link failed, LinkClosed after close()."""
        ...

    async def send(self, frames: Sequence[bytes]) -> None:
        """Write frames in order, waiting while the transport's buffer is full."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the link politely; idempotent."""
        ...
