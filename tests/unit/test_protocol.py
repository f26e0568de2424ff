"""Chunk codec: round trips and every single-chunk rejection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.codec import (
    HEADER_LEN,
    ChunkHeader,
    ProtocolError,
    RejectReason,
    crc32,
    pack_chunk,
    split_frame,
    unpack_chunk,
)

U32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def headers_and_data(draw: st.DrawFn) -> tuple[ChunkHeader, bytes]:
    count = draw(st.integers(1, 0xFFFF))
    idx = draw(st.integers(0, count - 1))
    data = draw(st.binary(min_size=1, max_size=64))
    offset = draw(st.integers(0, 10_000))
    frame_len = draw(st.integers(offset + len(data), 0xFFFFFFFF))
    hdr = ChunkHeader(flags=draw(st.sampled_from([0, 1])), boot_id=draw(U32),
                      frame_seq=draw(U32), chunk_index=idx, chunk_count=count,
                      frame_len=frame_len, frame_crc32=draw(U32), offset=offset,
                      capture_ms=draw(st.integers(0, 2**64 - 1)))
    return hdr, data


@given(headers_and_data())
def test_pack_unpack_round_trip(hd: tuple[ChunkHeader, bytes]) -> None:
    hdr, data = hd
    chunk = unpack_chunk(pack_chunk(hdr, data))
    assert chunk.header == hdr
    assert chunk.data == data


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700), U32, U32,
       st.integers(0, 2**63), st.booleans())
def test_split_frame_reassembles(jpeg: bytes, size: int, boot: int, seq: int, cap: int,
                                 synced: bool) -> None:
    payloads = split_frame(jpeg, boot_id=boot, frame_seq=seq, capture_ms=cap,
                           clock_synced=synced, chunk_data=size)
    chunks = [unpack_chunk(p) for p in payloads]
    assert b"".join(c.data for c in chunks) == jpeg
    for i, c in enumerate(chunks):
        h = c.header
        assert (h.chunk_index, h.chunk_count, h.frame_len) == (i, len(chunks), len(jpeg))
        assert h.frame_crc32 == crc32(jpeg)
        assert h.offset == i * size
        assert h.clock_synced == synced
        assert h.shared_fields() == chunks[0].header.shared_fields()


def _good() -> bytes:
    return split_frame(b"\xff\xd8hello\xff\xd9", boot_id=1, frame_seq=2)[0]


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: p[:HEADER_LEN - 1], RejectReason.SHORT_HEADER),
    (lambda p: b"XX" + p[2:], RejectReason.BAD_MAGIC),
    (lambda p: p[:2] + b"\x02" + p[3:], RejectReason.BAD_VERSION),
    (lambda p: p[:3] + b"\x02" + p[4:], RejectReason.BAD_FLAGS),
    (lambda p: p[:12] + (5).to_bytes(2, "little") + p[14:], RejectReason.BAD_CHUNK_INDEX),
    (lambda p: p[:14] + (0).to_bytes(2, "little") + p[16:], RejectReason.BAD_CHUNK_INDEX),
    (lambda p: p[:16] + (0).to_bytes(4, "little") + p[20:], RejectReason.BAD_FRAME_LEN),
    (lambda p: p[:HEADER_LEN], RejectReason.EMPTY_DATA),
    (lambda p: p[:24] + (3).to_bytes(4, "little") + p[28:], RejectReason.DATA_OVERRUN),
])
def test_single_chunk_rejections(mutate: object, reason: RejectReason) -> None:
    assert callable(mutate)
    with pytest.raises(ProtocolError) as exc:
        unpack_chunk(mutate(_good()))
    assert exc.value.reason is reason


@given(st.binary(max_size=200))
def test_unpack_arbitrary_bytes_raises_only_protocol_error(payload: bytes) -> None:
    try:
        unpack_chunk(payload)
    except ProtocolError as exc:
        assert isinstance(exc.reason, RejectReason)


def test_split_frame_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        split_frame(b"", boot_id=0, frame_seq=0)
    with pytest.raises(ValueError, match="range"):
        split_frame(b"x", boot_id=2**32, frame_seq=0)
    with pytest.raises(ValueError, match="65535"):
        split_frame(b"x" * 70000, boot_id=0, frame_seq=0, chunk_data=1)
