"""Pure JPEG envelope checks and header size parsing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from camstack.jpegs import make_jpeg, make_jpeg_variant
from encoder.jpeg import JpegDefect, even_size, frame_size, most_common_size, structure_defect


def test_structure_of_good_and_damaged_frames() -> None:
    j = make_jpeg(64, 48, 1)
    assert structure_defect(j) is None
    assert structure_defect(j + b"\x00" * 100) is None
    assert structure_defect(j[:-2]) is JpegDefect.NO_EOI
    assert structure_defect(j[: len(j) // 2]) is JpegDefect.NO_EOI
    assert structure_defect(j + b"tail") is JpegDefect.NO_EOI
    assert structure_defect(j[2:]) is JpegDefect.NO_SOI
    assert structure_defect(b"\xff\xd8") is JpegDefect.EMPTY
    assert structure_defect(b"") is JpegDefect.EMPTY


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300))
def test_frame_size_reads_the_sof(w: int, h: int) -> None:
    assert frame_size(make_jpeg(w, h, 0)) == (w, h)


def test_frame_size_of_progressive_and_grey() -> None:
    assert frame_size(make_jpeg_variant(33, 17, progressive=True)) == (33, 17)
    assert frame_size(make_jpeg_variant(40, 30, mode="L")) == (40, 30)


def test_frame_size_of_a_prefix_and_of_garbage() -> None:
    j = make_jpeg(64, 48, 1)
    assert frame_size(j[:400]) == (64, 48)
    assert frame_size(j[:20]) is None
    assert frame_size(b"\xff\xd8\xff\xda\x00\x02") is None
    assert frame_size(b"nope") is None


@given(st.binary(max_size=300))
def test_frame_size_never_raises(data: bytes) -> None:
    size = frame_size(b"\xff\xd8" + data)
    assert size is None or (size[0] > 0 and size[1] > 0)


def test_even_size() -> None:
    assert even_size(161, 121) == (160, 120)
    assert even_size(800, 600) == (800, 600)
    assert even_size(1, 100) is None
    assert even_size(3, 3) == (2, 2)


def test_most_common_size_prefers_majority_then_first_seen() -> None:
    a, b = (800, 600), (1600, 1200)
    assert most_common_size([b, a, a, None, b, a]) == a
    assert most_common_size([b, a]) == b
    assert most_common_size([None, None]) is None
    assert most_common_size([]) is None
