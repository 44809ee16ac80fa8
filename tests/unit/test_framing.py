"""Length-prefixed framing for QUIC streams (shared/protocol/framing.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from shared.protocol.framing import HEADER, FrameDecoder, encode_frames


def test_round_trip_of_a_batch() -> None:
    frames = [b"{}", b"x" * 1000, b""]
    assert FrameDecoder(4096).feed(encode_frames(frames, 4096)) == frames


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_any_chunking_yields_the_same_frames(frames: list[bytes], data: st.DataObject) -> None:
    wire = encode_frames(frames, 300)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder(300)
    out: list[bytes] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    assert out == frames
    assert decoder.buffered == 0


def test_declared_length_above_the_limit_fails_before_buffering_the_body() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(FrameTooLarge, match="declared a frame of 1025 bytes") as info:
        decoder.feed(HEADER.pack(1025) + b"a" * 10)
    assert isinstance(info.value, RemoteProtocolError)
    assert decoder.buffered == 0


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    assert FrameDecoder(8).feed(HEADER.pack(8) + b"12345678") == [b"12345678"]


def test_the_header_alone_is_enough_to_refuse() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(b"\xff\xff") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\xff\xff")


def test_encoding_an_oversized_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frames([b"x" * 11], 10)
