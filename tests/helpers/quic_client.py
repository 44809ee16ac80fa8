"""A hand-configured QUIC client for tests: connect with any certificate (or none) and
ALPN, optionally write raw stream bytes, and report how the connection ended."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration

from shared.aio.quic_channel import ALPN, QuicChannel, QuicChannelProtocol
from shared.protocol import codec
from shared.protocol.messages import Envelope


@dataclass
class QuicOutcome:
    connected: bool = False
    error_code: int | None = None
    reason: str = ""
    frames: list[Envelope] = field(default_factory=list)


async def raw_quic_client(
    port: int,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    alpn: str = ALPN,
    payload: bytes | None = None,
    wait: float = 3.0,
) -> QuicOutcome:
    """Connect to 127.0.0.1:port trusting `ca`; see the module docstring."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        server_name="127.0.0.1",
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        config.load_cert_chain(str(cert), str(key))
    outcome = QuicOutcome()
    try:
        async with connect(
            "127.0.0.1",
            port,
            configuration=config,
            create_protocol=partial(QuicChannelProtocol, max_frame_bytes=1 << 20),
        ) as proto:
            outcome.connected = True
            channel: QuicChannel = proto.channel
            if payload is not None:
                channel.open_stream()
                stream: Any = channel._stream_id
                channel.quic.send_stream_data(stream, payload)
                proto.transmit()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    frame = await asyncio.wait_for(channel.recv(), deadline - time.monotonic())
                    outcome.frames.append(codec.decode(frame))
                except Exception:
                    break
            event = getattr(proto._quic, "_close_event", None)
            if event is not None:
                outcome.error_code = event.error_code
                outcome.reason = event.reason_phrase
    except ConnectionError:
        pass
    return outcome
