"""Small real JPEGs made at test time with Pillow, shared by the ingestor and encoder tests."""

from __future__ import annotations

import datetime
import io
import json
import random
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def make_jpeg(width: int = 160, height: int = 120, seed: int = 0, quality: int = 75) -> bytes:
    """A real baseline JPEG with visible content that differs with ``seed``.

    A gradient background, a few coloured rectangles placed from ``seed`` and the seed
    printed as text, so two frames with different seeds differ in bytes and in pixels,
    and a decoded frame can be told apart by eye.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        seed: Frame number / random seed; same seed, same bytes.
        quality: JPEG quality 1..95.

    Returns:
        The JPEG file bytes (SOI ... EOI).
    """
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height))
    shade = (seed * 37) % 256
    # A gradient row by row: cheap and gives the encoder something non-flat to code.
    draw = ImageDraw.Draw(img)
    for y in range(height):
        v = (y * 255) // max(1, height - 1)
        draw.line([(0, y), (width - 1, y)], fill=(v, shade, 255 - v))
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = min(width - 1, x0 + rng.randrange(4, max(5, width // 2)))
        y1 = min(height - 1, y0 + rng.randrange(4, max(5, height // 2)))
        draw.rectangle([x0, y0, x1, y1],
                       fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw.text((4, 4), f"#{seed}", fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_jpegs(count: int, width: int = 160, height: int = 120, start: int = 0,
               quality: int = 75) -> list[bytes]:
    """``count`` distinct JPEGs with seeds ``start .. start+count-1``.

    Args:
        count: How many.
        width: Width in pixels.
        height: Height in pixels.
        start: First seed.
        quality: JPEG quality.

    Returns:
        The JPEG bytes in seed order.
    """
    return [make_jpeg(width, height, start + i, quality) for i in range(count)]


def make_jpeg_variant(width: int, height: int, *, mode: str = "RGB", fill: int | None = None,
                      subsampling: int = 2, progressive: bool = False, seed: int = 0) -> bytes:
    """A JPEG of an unusual kind: greyscale, flat, 4:2:2/4:4:4, progressive.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        mode: Pillow mode, ``RGB`` or ``L`` (greyscale JPEG).
        fill: A flat level 0..255 for every pixel instead of the usual picture.
        subsampling: Pillow's 0 (4:4:4), 1 (4:2:2, what the ESP32 sends) or 2 (4:2:0).
        progressive: Write a progressive JPEG.
        seed: Picture seed when ``fill`` is None.

    Returns:
        The JPEG bytes.
    """
    if fill is None:
        img = Image.open(io.BytesIO(make_jpeg(width, height, seed, 95))).convert(mode)
    else:
        img = Image.new(mode, (width, height), fill if mode == "L" else (fill, fill, fill))
    buf = io.BytesIO()
    if mode == "L":
        img.save(buf, format="JPEG", quality=90, progressive=progressive)
    else:
        img.save(buf, format="JPEG", quality=90, subsampling=subsampling,
                 progressive=progressive)
    return buf.getvalue()


def write_batch(root: Path, device: str, jpegs: list[bytes], *, start_ms: int = 1_795_515_300_000,
                interval_ms: int = 1000, counter: int = 1, boot_id: int = 0xDEADBEEF,
                ts: list[int] | None = None) -> dict[str, Any]:
    """Lay out a sealed batch exactly as the storage layout says (docs/storage.md).

    Frames go to ``batches/<id>/<batch>/frames/<ts:013d>_<boot:08x>_<seq:010d>.jpg``,
    then ``manifest.json`` is written last (temp + rename), as the ingestor seals.

    Args:
        root: Storage root.
        device: Device id.
        jpegs: Frame bytes in order (they need not be valid JPEGs).
        start_ms: ts_ms of the first frame.
        interval_ms: Gap between frames when ``ts`` is not given.
        counter: The per-device batch counter in the batch name.
        boot_id: Boot id of every frame.
        ts: Explicit ts_ms per frame.

    Returns:
        The ready event the ingestor would publish for it.
    """
    times = ts if ts is not None else [start_ms + i * interval_ms for i in range(len(jpegs))]
    batch = f"{device}-{_stamp(times[0])}-{counter:04d}"
    bdir = root / "batches" / device / batch
    (bdir / "frames").mkdir(parents=True)
    frames = []
    for seq, (data, t) in enumerate(zip(jpegs, times, strict=True)):
        name = f"frames/{t:013d}_{boot_id:08x}_{seq:010d}.jpg"
        (bdir / name).write_bytes(data)
        frames.append({"file": name, "boot_id": boot_id, "frame_seq": seq, "capture_ms": t,
                       "clock_synced": True, "ts_ms": t, "bytes": len(data),
                       "crc32": zlib.crc32(data)})
    manifest = {"v": 1, "device": device, "batch": batch, "sealed_ms": times[-1] + 1,
                "frames": frames, "first_capture_ms": times[0], "last_capture_ms": times[-1]}
    tmp = bdir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    tmp.replace(bdir / "manifest.json")
    return {"v": 1, "device": device, "batch": batch, "frames": len(jpegs),
            "first_capture_ms": times[0], "last_capture_ms": times[-1],
            "location": f"batches/{device}/{batch}"}


def _stamp(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
