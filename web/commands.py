"""The camera command form, validated as the firmware validates a command.

The rules are firmware/lib/camlink ``command.h``/``command.cpp``; nothing the device
would refuse is published on ``cam/<id>/cmd``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "240X240", "QVGA", "CIF", "HVGA", "VGA", "SVGA",
               "XGA", "HD", "SXGA", "UXGA")
"""esp_camera frame sizes, smallest first (camlink ``kSizes``)."""
LARGE_FROM = FRAME_SIZES.index("XGA")
MIN_JPEG_QUALITY = 4
MIN_JPEG_QUALITY_LARGE = 6
MAX_JPEG_QUALITY = 63
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 86_400_000
MAX_FIELD = 32


class CommandError(ValueError):
    """A form value the firmware would refuse."""


def _int(form: Mapping[str, object], key: str, lo: int, hi: int) -> int | None:
    raw = form.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or len(raw) > MAX_FIELD or not raw.strip().isascii() \
            or not raw.strip().isdigit():
        raise CommandError(f"{key} must be a whole number {lo}..{hi}")
    value = int(raw.strip())
    if not lo <= value <= hi:
        raise CommandError(f"{key} must be {lo}..{hi}")
    return value


def set_command(form: Mapping[str, object], current_size: object = None) -> bytes:
    """The ``{"cmd":"set",...}`` payload of a submitted form.

    Fields left empty are not sent (the device keeps them). ``jpeg_quality`` is at least
    6 at XGA and above, as the firmware checks a "set" as a whole: against the size in
    the form, else ``current_size`` (what the device's status says it uses).

    Raises:
        CommandError: Naming the field at fault.
    """
    cmd: dict[str, object] = {"cmd": "set"}
    interval = _int(form, "interval_ms", MIN_INTERVAL_MS, MAX_INTERVAL_MS)
    quality = _int(form, "jpeg_quality", MIN_JPEG_QUALITY, MAX_JPEG_QUALITY)
    size = form.get("frame_size")
    if size not in (None, ""):
        if not isinstance(size, str) or size not in FRAME_SIZES:
            raise CommandError("frame_size must be one of " + ", ".join(FRAME_SIZES))
        cmd["frame_size"] = size
    effective = cmd.get("frame_size") or current_size
    if quality is not None and isinstance(effective, str) and effective in FRAME_SIZES \
            and FRAME_SIZES.index(effective) >= LARGE_FROM and quality < MIN_JPEG_QUALITY_LARGE:
        raise CommandError(f"jpeg_quality must be at least {MIN_JPEG_QUALITY_LARGE} "
                           f"at {effective}")
    if quality is not None:
        cmd["jpeg_quality"] = quality
    if interval is not None:
        cmd["interval_ms"] = interval
    if len(cmd) == 1:
        raise CommandError("nothing to set: give interval_ms, frame_size or jpeg_quality")
    return json.dumps(cmd, separators=(",", ":"), sort_keys=True).encode()
