"""Frame chunk codec, wire contract version 1 (docs/protocol.md). Pure: no I/O.

A JPEG travels as one or more chunks, each a 36-byte little-endian header followed by
data. This module packs and unpacks single chunks and splits a whole frame; it is used
by the ingestor, the simulator, the tests and the benchmarks alike.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import NamedTuple

from contract.errors import ContractError

MAGIC = b"CF"
VERSION = 1
HEADER = struct.Struct("<2sBBIIHHIIIQ")
HEADER_LEN = HEADER.size
assert HEADER_LEN == 36

FLAG_CLOCK_SYNCED = 0x01
KNOWN_FLAGS = FLAG_CLOCK_SYNCED
DEFAULT_CHUNK_DATA = 8 * 1024
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF
MAX_U64 = 0xFFFFFFFFFFFFFFFF

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"


class RejectReason(enum.StrEnum):
    """Why a chunk or a frame was refused. Values are metric label values."""

    SHORT_HEADER = "short_header"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_FLAGS = "bad_flags"
    BAD_CHUNK_INDEX = "bad_chunk_index"
    BAD_FRAME_LEN = "bad_frame_len"
    EMPTY_DATA = "empty_data"
    DATA_OVERRUN = "data_overrun"
    HEADER_MISMATCH = "header_mismatch"
    CHUNK_CONFLICT = "chunk_conflict"
    TOO_LARGE = "too_large"
    CRC_MISMATCH = "crc_mismatch"
    NOT_JPEG = "not_jpeg"
    BAD_COVERAGE = "bad_coverage"
    BAD_DEVICE_ID = "bad_device_id"


class ProtocolError(ContractError):
    """A payload breaks the wire contract.

    Attributes:
        reason: Machine-readable reason (a metric label).
    """

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class ChunkHeader(NamedTuple):
    """The 36-byte header of one chunk.

    A named tuple rather than a frozen dataclass: one is built per received chunk, and a
    frozen dataclass's ``__init__`` costs several times more (measured).
    """

    flags: int
    boot_id: int
    frame_seq: int
    chunk_index: int
    chunk_count: int
    frame_len: int
    frame_crc32: int
    offset: int
    capture_ms: int
    version: int = VERSION

    @property
    def clock_synced(self) -> bool:
        """Whether ``capture_ms`` comes from a synchronised clock (flag bit 0)."""
        return bool(self.flags & FLAG_CLOCK_SYNCED)

    def shared_fields(self) -> tuple[int, int, int, int, int, int, int]:
        """Fields every chunk of one frame must repeat identically."""
        return (self.version, self.flags, self.boot_id, self.frame_seq, self.chunk_count,
                self.frame_len, (self.frame_crc32 << 64) | self.capture_ms)


class Chunk(NamedTuple):
    """A decoded chunk: header plus its data bytes."""

    header: ChunkHeader
    data: bytes


def pack_chunk(header: ChunkHeader, data: bytes) -> bytes:
    """Encode one chunk.

    Args:
        header: Header fields; ``version`` is written as given so tests can forge bad ones.
        data: Chunk data.

    Returns:
        The MQTT payload.
    """
    return HEADER.pack(
        MAGIC, header.version, header.flags, header.boot_id, header.frame_seq,
        header.chunk_index, header.chunk_count, header.frame_len, header.frame_crc32,
        header.offset, header.capture_ms,
    ) + data


def unpack_chunk(payload: bytes) -> Chunk:
    """Decode and check one chunk on its own (cross-chunk checks are the assembler's).

    Args:
        payload: The MQTT payload.

    Returns:
        The chunk.

    Raises:
        ProtocolError: For a short header, wrong magic/version, unknown flags, an index
            outside the count, a zero frame length, empty data or data past ``frame_len``.
    """
    if len(payload) < HEADER_LEN:
        raise ProtocolError(RejectReason.SHORT_HEADER, f"{len(payload)} bytes")
    (magic, version, flags, boot_id, seq, idx, count, frame_len, crc, offset,
     capture_ms) = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError(RejectReason.BAD_MAGIC, magic.hex())
    if version != VERSION:
        raise ProtocolError(RejectReason.BAD_VERSION, str(version))
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(RejectReason.BAD_FLAGS, hex(flags))
    if count < 1 or idx >= count:
        raise ProtocolError(RejectReason.BAD_CHUNK_INDEX, f"{idx}/{count}")
    if frame_len < 1:
        raise ProtocolError(RejectReason.BAD_FRAME_LEN, "0")
    data = payload[HEADER_LEN:]
    if not data:
        raise ProtocolError(RejectReason.EMPTY_DATA)
    if offset + len(data) > frame_len:
        raise ProtocolError(RejectReason.DATA_OVERRUN, f"{offset}+{len(data)}>{frame_len}")
    header = ChunkHeader(flags, boot_id, seq, idx, count, frame_len, crc, offset, capture_ms,
                         version)
    return Chunk(header, bytes(data))


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3) as the contract uses it."""
    return zlib.crc32(data) & MAX_U32


def looks_like_jpeg(data: bytes) -> bool:
    """SOI at the start and EOI at the end, the contract's JPEG test."""
    return len(data) >= 4 and data.startswith(JPEG_SOI) and data.endswith(JPEG_EOI)


def split_frame(
    jpeg: bytes,
    *,
    boot_id: int,
    frame_seq: int,
    capture_ms: int = 0,
    clock_synced: bool = False,
    chunk_data: int = DEFAULT_CHUNK_DATA,
) -> list[bytes]:
    """Split a whole JPEG into chunk payloads, as the firmware does.

    Args:
        jpeg: The frame.
        boot_id: Boot identifier (u32).
        frame_seq: Frame counter within the boot (u32).
        capture_ms: Capture time in Unix ms, 0 if unknown.
        clock_synced: Sets flag bit 0.
        chunk_data: Data bytes per chunk.

    Returns:
        The payloads in chunk order.

    Raises:
        ValueError: If a field does not fit its wire width or the frame is empty.
    """
    if not jpeg:
        raise ValueError("empty frame")
    if chunk_data < 1:
        raise ValueError("chunk_data must be >= 1")
    if not (0 <= boot_id <= MAX_U32 and 0 <= frame_seq <= MAX_U32
            and 0 <= capture_ms <= MAX_U64 and len(jpeg) <= MAX_U32):
        raise ValueError("field out of range")
    count = (len(jpeg) + chunk_data - 1) // chunk_data
    if count > MAX_U16:
        raise ValueError(f"{count} chunks exceed 65535; use larger chunks")
    flags = FLAG_CLOCK_SYNCED if clock_synced else 0
    crc = crc32(jpeg)
    out = []
    for idx in range(count):
        off = idx * chunk_data
        hdr = ChunkHeader(flags, boot_id, frame_seq, idx, count, len(jpeg), crc, off, capture_ms)
        out.append(pack_chunk(hdr, jpeg[off:off + chunk_data]))
    return out
