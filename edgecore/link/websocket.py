"""WebSocket transport, edge side: a `Channel` over websockets' asyncio client.

Translates websockets and ssl exceptions into the edgesync tree at this
boundary: a cloud we cannot verify or that refuses our certificate is an
AuthError (an operator must act); everything else is LinkBroken (retry).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)

from shared.errors import AuthError, IdentityRefused, LinkBroken, LinkClosed, PKIError


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Mutual TLS: our node certificate, and only the pinned cloud CA is trusted."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise PKIError(
            f"cannot load this node's TLS material ({cert}, {key}, {ca}): {exc}; "
            "run `edgecore join` again"
        ) from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class WebSocketClientChannel:
    transport = "websocket"
    node = ""

    def __init__(self, conn: ClientConnection, peer: str) -> None:
        self._conn = conn
        self.peer = peer
        self._closing = False

    async def recv(self) -> bytes:
        try:
            data = await self._conn.recv()
        except ConnectionClosed as exc:
            if self._closing:
                raise LinkClosed("link closed") from None
            raise LinkBroken(f"cloud {self.peer} closed the link: {_describe_close(exc)}") from None
        return data.encode() if isinstance(data, str) else data

    async def send(self, frames: Sequence[bytes]) -> None:
        try:
            for frame in frames:
                # Frames are UTF-8 JSON: send them as text without decoding (websockets 13+).
                await self._conn.send(frame, text=True)
        except ConnectionClosed as exc:
            raise LinkBroken(f"cloud {self.peer} closed the link: {_describe_close(exc)}") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closing = True
        try:
            await asyncio.wait_for(self._conn.close(code, reason[:120]), 2.0)
        except (TimeoutError, asyncio.TimeoutError, OSError):
            pass


def _describe_close(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "connection lost without a close frame"
    return f"code {frame.code}{', ' + frame.reason if frame.reason else ''}"


async def connect_websocket(
    url: str, ssl_context: ssl.SSLContext, timeout: float, max_frame_bytes: int
) -> WebSocketClientChannel:
    """Open the link; raises AuthError (fatal) or LinkBroken (retry)."""
    try:
        conn = await connect(
            url,
            ssl=ssl_context,
            open_timeout=timeout,
            ping_interval=None,  # the protocol pings; design.md: one keepalive, not two
            compression=None,  # ~33 KiB/connection on the cloud for little gain on small JSON
            max_size=max_frame_bytes + 65536,
            close_timeout=2,
        )
    except ssl.SSLCertVerificationError as exc:
        raise AuthError(
            f"cannot verify the cloud at {url}: {exc.verify_message}; is this the "
            "cloud this node joined? (its CA is pinned at join)"
        ) from None
    except ssl.SSLError as exc:
        text = str(exc)
        if "CERTIFICATE" in text.upper() or "ALERT" in text.upper():
            raise AuthError(
                f"the cloud at {url} refused this node's certificate ({exc.reason}); "
                "re-join with a new token"
            ) from None
        raise LinkBroken(f"TLS to {url} failed: {exc}") from None
    except InvalidStatus as exc:
        raise LinkBroken(
            f"cloud at {url} refused the WebSocket upgrade: HTTP {exc.response.status_code}"
        ) from None
    except (InvalidHandshake, OSError, TimeoutError, asyncio.TimeoutError) as exc:
        alert = _tls_alert(exc)
        if alert is not None:
            raise IdentityRefused(
                f"the cloud at {url} refused this node's certificate "
                f"({alert}); re-join the node with a new token"
            ) from None
        if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
            # TLS completed and our upgrade request went out, then the cloud hung up
            # without a word: what it does when it rejects the client certificate
            # (asyncio drops the TLS alert). A false alarm only costs one slow retry.
            raise IdentityRefused(
                f"the cloud at {url} closed the connection right after the TLS handshake: "
                "it most likely refused this node's certificate (re-join the node with a "
                "new token; the cloud's log names the reason)"
            ) from None
        raise LinkBroken(f"cannot reach the cloud at {url}: {exc or type(exc).__name__}") from None
    host, port = conn.remote_address[:2] if conn.remote_address else ("?", 0)
    return WebSocketClientChannel(conn, f"{host}:{port}")


def _tls_alert(exc: BaseException) -> str | None:
    """The certificate alert behind a failed upgrade, if any (TLS 1.3 delivers a refusal
    of our certificate on the first read, so websockets reports a bad HTTP response)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError) and "ALERT" in str(seen).upper():
            return str(getattr(seen, "reason", None) or seen)
        seen = seen.__cause__ or seen.__context__
    return None
