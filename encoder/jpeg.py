"""Cheap structural checks on JPEG bytes, before any decoder sees them.

Pure: bytes in, answers out. The decoder catches corrupt entropy data; these checks
catch what the decoder forgives: a frame cut short by the camera (the ESP32 driver's
"NO-EOI" case still decodes, with a grey bottom) and frames whose size must be known
before decoding, to choose the video's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"

# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and
# arithmetic). C4 (DHT), C8 (JPG) and CC (DAC) sit in the same range but are not SOFs.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                          0xCD, 0xCE, 0xCF})
# Markers that stand alone, without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class JpegDefect(StrEnum):
    """Why a frame is refused before decoding."""

    EMPTY = "empty"
    NO_SOI = "no_soi"
    NO_EOI = "no_eoi"


def structure_defect(data: bytes) -> JpegDefect | None:
    """Check the JPEG envelope: SOI at the start, EOI at the end.

    Trailing zero bytes after the EOI are tolerated: some camera drivers hand out the
    frame buffer padded to a word boundary.

    Args:
        data: The whole file.

    Returns:
        The defect, or None when the envelope is intact.
    """
    if len(data) < 4:
        return JpegDefect.EMPTY
    if not data.startswith(SOI):
        return JpegDefect.NO_SOI
    if not data.rstrip(b"\x00").endswith(EOI):
        return JpegDefect.NO_EOI
    return None


def frame_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOF segment, without decoding.

    Args:
        data: JPEG bytes; a prefix is enough when it reaches the SOF segment.

    Returns:
        ``(width, height)``, or None when no well-formed SOF precedes the scan data.
    """
    if not data.startswith(SOI):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan: no SOF came first
            return None
        seg_len = int.from_bytes(data[i + 2:i + 4], "big")
        if seg_len < 2:
            return None
        if marker in _SOF_MARKERS:
            if seg_len < 7 or i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            if width == 0 or height == 0:
                return None
            return width, height
        i += 2 + seg_len
    return None


def even_size(width: int, height: int) -> tuple[int, int] | None:
    """The largest even size not above ``width`` x ``height`` (4:2:0 needs even sides).

    Args:
        width: Width in pixels.
        height: Height in pixels.

    Returns:
        The even size, or None when a side would drop below 2 pixels.
    """
    w, h = width & ~1, height & ~1
    if w < 2 or h < 2:
        return None
    return w, h


def most_common_size(sizes: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The size most frames have; on a tie, the one seen first.

    Args:
        sizes: One entry per frame, None for frames whose size is unknown.

    Returns:
        The winning size, or None when no size is known.
    """
    counts: Counter[tuple[int, int]] = Counter()
    first_seen: dict[tuple[int, int], int] = {}
    for idx, size in enumerate(sizes):
        if size is None:
            continue
        counts[size] += 1
        first_seen.setdefault(size, idx)
    if not counts:
        return None
    return min(counts, key=lambda s: (-counts[s], first_seen[s]))
