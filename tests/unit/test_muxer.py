"""The PyAV pipeline: real JPEGs in, a real MP4 out, reopened and checked with PyAV."""

from __future__ import annotations

import io
import struct
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from camstack.jpegs import make_jpeg, make_jpeg_variant
from encoder.muxer import (
    EncodeCancelledError,
    EncodeOptions,
    FrameInput,
    choose_size,
    encode_video,
    probe_video,
)

FAST = EncodeOptions(preset="ultrafast", decode_threads=2)


def frames_of(jpegs: list[bytes], start: int = 0, step: int = 1000) -> list[FrameInput]:
    return [FrameInput(ts_ms=start + i * step, data=j) for i, j in enumerate(jpegs)]


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    out, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        out.append(kind.decode("latin-1"))
        if size < 8:
            break
        i += size
    return out


def decoded_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.time_base is not None
        return [float((f.pts or 0) * s.time_base) for f in c.decode(s)]


def test_writes_h264_mp4_with_faststart(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    res = encode_video(frames_of([make_jpeg(160, 120, i) for i in range(30)]), out,
                       EncodeOptions(fps=30, preset="ultrafast"))
    assert (res.frames_written, res.frames_skipped) == (30, 0)
    info = probe_video(out)
    assert info.codec == "h264"
    assert info.frames == 30
    assert (info.width, info.height) == (160, 120)
    assert info.pix_fmt == "yuv420p"
    assert info.duration_s == pytest.approx(1.0, abs=0.002)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30


def test_bytesio_output_and_playback_rate(tmp_path: Path) -> None:
    buf = io.BytesIO()
    res = encode_video(frames_of([make_jpeg(96, 64, i) for i in range(12)]), buf,
                       EncodeOptions(fps=4, preset="ultrafast", decode_threads=1))
    assert res.frames_written == 12
    buf.seek(0)
    info = probe_video(buf)
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 12, 96, 64)
    assert info.duration_s == pytest.approx(3.0, abs=0.01)


def test_bad_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [make_jpeg(160, 120, i) for i in range(10)]
    whole = make_jpeg(160, 120, 99)
    missing = tmp_path / "gone.jpg"
    bad = [
        FrameInput(ts_ms=1, data=whole[: len(whole) // 2]),            # NO-EOI: cut short
        FrameInput(ts_ms=2, data=whole[: len(whole) // 2] + b"\xff\xd9"),  # cut, EOI glued on
        FrameInput(ts_ms=3, data=bytes(range(256)) * 8),                # random bytes
        FrameInput(ts_ms=4, data=b""),                                  # empty
        FrameInput(ts_ms=5, data=good[0], crc32=123),                   # CRC mismatch
        FrameInput(ts_ms=6, path=missing),                              # file lost
    ]
    frames = frames_of(good[:5]) + bad + frames_of(good[5:], start=10_000)
    out = tmp_path / "v.mp4"
    res = encode_video(frames, out, FAST)
    assert res.frames_written == 10
    assert dict(res.skipped) == {"no_eoi": 1, "decode_error": 1, "no_soi": 1, "empty": 1,
                                 "crc_mismatch": 1, "missing": 1}
    assert probe_video(out).frames == 10


def test_no_decodable_frame_writes_nothing(tmp_path: Path) -> None:
    res = encode_video([FrameInput(ts_ms=0, data=b"\xff\xd8garbage\xff\xd9"),
                        FrameInput(ts_ms=1, data=b"nope")], tmp_path / "v.mp4", FAST)
    assert res.frames_written == 0
    assert res.frames_skipped == 2
    assert res.thumbnail_jpeg is None


def test_resolution_change_scales_to_most_common_size(tmp_path: Path) -> None:
    # The first two frames are of another size (as after a frame-size command): the
    # majority decides, and the odd ones are scaled, not dropped.
    jpegs = [make_jpeg(320, 240, 0), make_jpeg(320, 240, 1)]
    jpegs += [make_jpeg(160, 120, i) for i in range(2, 8)]
    jpegs += [make_jpeg(200, 100, 8)]
    out = tmp_path / "v.mp4"
    res = encode_video(frames_of(jpegs), out, FAST)
    assert (res.width, res.height, res.frames_written) == (160, 120, 9)
    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (160, 120, 9)


def test_odd_dimensions_round_down_to_even(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    res = encode_video(frames_of([make_jpeg(161, 121, i) for i in range(6)]), out, FAST)
    assert (res.width, res.height, res.frames_written) == (160, 120, 6)
    assert (probe_video(out).width, probe_video(out).height) == (160, 120)


def test_extreme_and_unusual_frames_encode(tmp_path: Path) -> None:
    jpegs = [
        make_jpeg_variant(64, 48, fill=0),
        make_jpeg_variant(64, 48, fill=255),
        make_jpeg_variant(64, 48, fill=128),
        make_jpeg_variant(64, 48, mode="L", seed=3),
        make_jpeg_variant(64, 48, subsampling=1, seed=4),   # 4:2:2 like the ESP32
        make_jpeg_variant(64, 48, subsampling=0, seed=5),   # 4:4:4
        make_jpeg_variant(64, 48, progressive=True, seed=6),
        make_jpeg(64, 48, 7) + b"\x00" * 64,                 # padded after the EOI
    ]
    out = tmp_path / "v.mp4"
    res = encode_video(frames_of(jpegs), out, FAST)
    assert (res.frames_written, res.frames_skipped) == (8, 0)
    with av.open(str(out)) as c:
        # The raw Y plane: the first `height` rows of a yuv420p array.
        lumas = [f.to_ndarray()[10:30, 10:50].mean() for f in c.decode(video=0)]
    # Full-range JPEG black/white/grey reach the limited video range ends (16/235).
    assert lumas[0] == pytest.approx(16, abs=3)
    assert lumas[1] == pytest.approx(235, abs=3)
    assert lumas[2] == pytest.approx(126, abs=3)


def test_color_is_tagged_limited_range_bt601(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    encode_video(frames_of([make_jpeg(64, 48, i) for i in range(3)]), out, FAST)
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert cc.color_range == 1  # MPEG / "tv"
        assert cc.colorspace == 6   # SMPTE 170M (BT.601)


def test_capture_timing_is_variable_frame_rate(tmp_path: Path) -> None:
    ts = [0, 100, 250, 1000, 1100, 1200, 3000, 3001, 3002, 5000]
    start = 1_795_515_300_000
    frames = [FrameInput(ts_ms=start + t, data=make_jpeg(96, 64, i)) for i, t in enumerate(ts)]
    out = tmp_path / "v.mp4"
    res = encode_video(frames, out, EncodeOptions(timing="capture", preset="ultrafast"))
    assert res.frames_written == 10
    assert decoded_times(out) == pytest.approx([t / 1000 for t in ts], abs=0.0011)
    # The last frame shows as long as the gap before it (2 s): 7 s in all.
    assert probe_video(out).duration_s == pytest.approx(7.0, abs=0.01)


def test_capture_timing_nudges_equal_and_backward_times(tmp_path: Path) -> None:
    ts = [1000, 1000, 900, 2000]
    frames = [FrameInput(ts_ms=t, data=make_jpeg(96, 64, i)) for i, t in enumerate(ts)]
    out = tmp_path / "v.mp4"
    encode_video(frames, out, EncodeOptions(timing="capture", preset="ultrafast"))
    assert decoded_times(out) == pytest.approx([0.0, 0.001, 0.002, 1.0], abs=0.0011)


def test_fixed_timing_ignores_capture_gaps(tmp_path: Path) -> None:
    ts = [0, 5, 60_000, 60_001]
    frames = [FrameInput(ts_ms=t, data=make_jpeg(96, 64, i)) for i, t in enumerate(ts)]
    out = tmp_path / "v.mp4"
    encode_video(frames, out, EncodeOptions(fps=10, preset="ultrafast"))
    assert decoded_times(out) == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=0.001)


def test_gop_sets_keyframe_interval(tmp_path: Path) -> None:
    # Near-identical frames: x264 would otherwise make one keyframe for the lot.
    base = np.array(Image.open(io.BytesIO(make_jpeg(128, 96, 1))))
    jpegs = []
    for i in range(40):
        img = base.copy()
        img[i % 96, :, :] = 255
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    info_by_gop = {}
    for gop in (10, 1000):
        out = tmp_path / f"g{gop}.mp4"
        encode_video(frames_of(jpegs), out, EncodeOptions(gop=gop, preset="ultrafast"))
        info_by_gop[gop] = probe_video(out).keyframes
    assert info_by_gop[10] >= 4
    assert info_by_gop[1000] < info_by_gop[10]


def test_preset_and_crf_reach_x264(tmp_path: Path) -> None:
    jpegs = [make_jpeg(160, 120, i) for i in range(8)]
    sizes = {}
    for crf in (10, 40):
        out = tmp_path / f"c{crf}.mp4"
        encode_video(frames_of(jpegs), out, EncodeOptions(crf=crf, preset="ultrafast"))
        sizes[crf] = out.stat().st_size
    assert sizes[10] > 2 * sizes[40]


def test_thumbnail_is_a_small_jpeg_of_a_mid_batch_frame(tmp_path: Path) -> None:
    res = encode_video(frames_of([make_jpeg(640, 480, i) for i in range(5)]),
                       tmp_path / "v.mp4", EncodeOptions(preset="ultrafast", thumbnail_width=160))
    assert res.thumbnail_jpeg is not None
    img = Image.open(io.BytesIO(res.thumbnail_jpeg))
    assert (img.format, img.size) == ("JPEG", (160, 120))


def test_choose_size_from_headers_and_fallback() -> None:
    assert choose_size(frames_of([make_jpeg(33, 21, 0)])) == (32, 20)
    assert choose_size(frames_of([b"junk", b""])) is None


def test_cancel_stops_encoding(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EncodeCancelledError):
        encode_video(frames_of([make_jpeg(64, 48, i) for i in range(4)]), tmp_path / "v.mp4",
                     FAST, cancel=cancel)


def test_paths_are_read_from_disk(tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(make_jpeg(64, 48, i))
        paths.append(FrameInput(ts_ms=i, path=p))
    out = tmp_path / "v.mp4"
    assert encode_video(paths, out, FAST).frames_written == 4
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(30)
