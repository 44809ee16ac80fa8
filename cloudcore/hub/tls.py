"""TLS contexts for the edge-facing transports: mutual TLS, the cloud CA only."""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.errors import PKIError


def server_context(
    cert: Path, key: Path, ca: Path, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A server context that requires a client certificate issued by our CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise PKIError(
            f"cannot load the cloud's TLS material ({cert}, {key}, {ca}): {exc}"
        ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
