"""``camstack cmd``: send a device a command, checked as strictly as its firmware does.

The firmware (``firmware/lib/camlink/src/camlink/command.cpp``) rejects a whole
command for one unknown field or out-of-range value and only reports it in its status
later; checking the same rules here refuses the mistake before anything is sent:

    {"cmd":"set","frame_size":"SVGA","jpeg_quality":12,"interval_ms":1000}
    {"cmd":"set","vflip":true,"aec":false,"aec_value":300,"agc_gain":5,"wb_mode":0}
    {"cmd":"reboot"}    {"cmd":"status"}
    {"cmd":"ota","url":"https://…","sha256":"<64 hex>","size":1234567}
"""

from __future__ import annotations

import json
import re
from typing import Any

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "240X240", "QVGA", "CIF", "HVGA", "VGA", "SVGA",
               "XGA", "HD", "SXGA", "UXGA")
"""OV2640 sizes by their esp_camera names, smallest first (the firmware's order)."""

JPEG_QUALITY = (4, 63)
"""esp_camera quality, lower is better; at XGA and above the firmware needs 6 or more."""
JPEG_QUALITY_LARGE_MIN = 6
INTERVAL_MS = (100, 86_400_000)
BOOL_FIELDS = ("vflip", "hmirror", "aec", "agc", "awb")
INT_FIELDS = {"aec_value": (0, 1200), "agc_gain": (0, 30), "wb_mode": (0, 4)}
MAX_OTA_URL = 128
MAX_OTA_SIZE = 16 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class CommandError(ValueError):
    """A command the firmware would reject, with the reason."""


def _int(value: Any, lo: int, hi: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CommandError(f"{field} must be an integer {lo}..{hi}, not {value!r}")
    return value


def validate(cmd: dict[str, Any]) -> dict[str, Any]:
    """Check a command against the firmware's rules.

    Args:
        cmd: The decoded JSON object.

    Returns:
        The same command.

    Raises:
        CommandError: With the first reason the firmware would give (or a clearer one).
    """
    if not isinstance(cmd, dict):
        raise CommandError("a command is a JSON object")
    name = cmd.get("cmd")
    if not isinstance(name, str):
        raise CommandError('missing "cmd" (set, reboot, status or ota)')
    fields = {k: v for k, v in cmd.items() if k != "cmd"}
    if name in ("reboot", "status"):
        if fields:
            raise CommandError(f"{name} takes no fields, got {', '.join(fields)}")
    elif name == "set":
        _validate_set(fields)
    elif name == "ota":
        _validate_ota(fields)
    else:
        raise CommandError(f"unknown cmd {name!r}: set, reboot, status or ota")
    return cmd


def _validate_set(fields: dict[str, Any]) -> None:
    if not fields:
        raise CommandError("set without settings")
    for key, value in fields.items():
        if key == "frame_size":
            if value not in FRAME_SIZES:
                raise CommandError(f"frame_size must be one of {', '.join(FRAME_SIZES)}, "
                                   f"not {value!r}")
        elif key == "jpeg_quality":
            _int(value, *JPEG_QUALITY, key)
        elif key == "interval_ms":
            _int(value, *INTERVAL_MS, key)
        elif key in BOOL_FIELDS:
            if not (isinstance(value, bool) or value in (0, 1)):
                raise CommandError(f"{key} must be true or false, not {value!r}")
        elif key in INT_FIELDS:
            _int(value, *INT_FIELDS[key], key)
        else:
            known = ["frame_size", "jpeg_quality", "interval_ms", *BOOL_FIELDS, *INT_FIELDS]
            raise CommandError(f"unknown field {key!r} for set; known: {', '.join(known)}")
    size, quality = fields.get("frame_size"), fields.get("jpeg_quality")
    if (size is not None and quality is not None and FRAME_SIZES.index(size)
            >= FRAME_SIZES.index("XGA") and quality < JPEG_QUALITY_LARGE_MIN):
        raise CommandError(f"jpeg_quality below {JPEG_QUALITY_LARGE_MIN} at {size} overflows "
                           "the camera's frame buffers")


def _validate_ota(fields: dict[str, Any]) -> None:
    url, sha, size = fields.get("url"), fields.get("sha256"), fields.get("size")
    unknown = set(fields) - {"url", "sha256", "size"}
    if unknown:
        raise CommandError(f"unknown field {sorted(unknown)[0]!r} for ota")
    if url is None or sha is None or size is None:
        raise CommandError("ota needs url, sha256 and size (`camstack device ota` fills them)")
    if (not isinstance(url, str) or not url.startswith("https://") or len(url) <= 8
            or len(url) > MAX_OTA_URL):
        raise CommandError(f"url must be an https:// URL of at most {MAX_OTA_URL} characters")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise CommandError("sha256 must be 64 hex digits")
    _int(size, 1, MAX_OTA_SIZE, "size")


def build(action: str, **settings: Any) -> dict[str, Any]:
    """The command for a verb of the command line, or a JSON object given as text.

    Args:
        action: ``set``, ``reboot``, ``status`` or a JSON object (``'{"cmd": …}'``).
        **settings: ``set`` fields (None: not given).

    Returns:
        The validated command.

    Raises:
        CommandError: Bad JSON, settings with a verb that takes none, or a bad value.
    """
    given = {k: v for k, v in settings.items() if v is not None}
    if action.lstrip().startswith("{"):
        if given:
            raise CommandError("give either a JSON command or options, not both")
        try:
            cmd = json.loads(action)
        except ValueError as exc:
            raise CommandError(f"not valid JSON: {exc}") from None
        return validate(cmd)
    if action in ("reboot", "status") and given:
        raise CommandError(f"{action} takes no options ({', '.join(given)} given)")
    if action == "set":
        return validate({"cmd": "set", **given})
    return validate({"cmd": action})


def payload(cmd: dict[str, Any]) -> bytes:
    """Compact JSON, as the firmware's flat parser reads it."""
    return json.dumps(cmd, separators=(",", ":")).encode()
