"""Small real JPEGs made at test time with Pillow, shared by the ingestor and encoder tests."""

from __future__ import annotations

import io
import random

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
