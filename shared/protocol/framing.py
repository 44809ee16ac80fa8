"""Length-prefixed framing for byte-stream transports (QUIC streams), sans-I/O.

Each frame is a 4-byte big-endian length followed by that many bytes of
envelope (docs/protocol.md §1). The declared length is checked against the
limit as soon as its 4 bytes arrive, before anything is buffered for the
body, so a hostile peer cannot make us allocate (KubeEdge CVE-2026-62370
was a missing check of exactly this kind).
"""

from __future__ import annotations

import struct

from shared.errors import FrameTooLarge, LocalProtocolError

HEADER = struct.Struct(">I")


def encode_frames(frames: list[bytes], max_frame_bytes: int) -> bytes:
    """Concatenate frames with their length prefixes (one write for a batch)."""
    parts = []
    for frame in frames:
        if len(frame) > max_frame_bytes:
            raise LocalProtocolError(f"frame of {len(frame)} bytes above {max_frame_bytes}")
        parts.append(HEADER.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


class FrameDecoder:
    """Feed stream bytes in, get whole frames out.

    Error handling: raises FrameTooLarge when a declared length exceeds
    `max_frame_bytes`; after that the stream is unusable (framing is lost).
    A zero-length frame is passed on; the codec rejects it as malformed.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._need: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (bounded by the limit plus a header)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER.size:
                    return frames
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self.max_frame_bytes:
                    self._buffer.clear()
                    raise FrameTooLarge(
                        f"peer declared a frame of {length} bytes, above the "
                        f"{self.max_frame_bytes}-byte limit (garbage or hostile stream)"
                    )
                del self._buffer[: HEADER.size]
                self._need = length
            if len(self._buffer) < self._need:
                return frames
            frames.append(bytes(self._buffer[: self._need]))
            del self._buffer[: self._need]
            self._need = None
