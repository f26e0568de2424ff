"""The encoder's side of the wire contract and the storage layout, as pure functions.

Parsing of ``cam/<id>/ready`` events and batch manifests, the video file names, the
``cam/<id>/video`` event, and the frame timeline. No MQTT, no PyAV, no file system:
everything here is checked by unit tests on plain values.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal

from config.settings import DEVICE_ID_RE

CONTRACT_VERSION = 1

BATCH_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""A batch name: ``<id>-<%Y%m%dT%H%M%SZ>-<NNNN>``; only the safe characters are enforced."""

FRAME_FILE_RE = re.compile(r"frames/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}\.jpg")
"""A frame's path inside its batch folder: one level under ``frames/``, no ``..``."""

MAX_MS = 2**63 - 1


class Malformed(StrEnum):
    """Why a ready event was refused."""

    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_VERSION = "bad_version"
    BAD_FIELD = "bad_field"
    BAD_LOCATION = "bad_location"
    TOPIC_MISMATCH = "topic_mismatch"


class MalformedEventError(ValueError):
    """A ready event that cannot be acted upon.

    Attributes:
        reason: The category, a metric label.
        detail: What exactly was wrong, for the log.
    """

    def __init__(self, reason: Malformed, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class BadManifestError(ValueError):
    """A batch manifest that is unreadable or contradicts the contract."""


@dataclass(frozen=True)
class ReadyEvent:
    """A parsed, validated ``cam/<id>/ready`` event."""

    device: str
    batch: str
    frames: int
    first_capture_ms: int
    last_capture_ms: int
    location: str


@dataclass(frozen=True)
class ManifestFrame:
    """One frame of a batch, in video order."""

    file: str
    ts_ms: int
    crc32: int | None
    size: int | None


@dataclass(frozen=True)
class Manifest:
    """A sealed batch's manifest."""

    device: str
    batch: str
    frames: tuple[ManifestFrame, ...]
    first_capture_ms: int
    last_capture_ms: int


def ready_topic_filter(share_group: str, prefix: str) -> str:
    """The shared subscription every encoder takes.

    Args:
        share_group: Shared subscription group.
        prefix: Topic prefix.

    Returns:
        ``$share/<group>/<prefix>/+/ready``.
    """
    return f"$share/{share_group}/{prefix}/+/ready"


def video_topic(prefix: str, device: str) -> str:
    """Where a device's videos are announced (retained).

    Args:
        prefix: Topic prefix.
        device: Device id.

    Returns:
        ``<prefix>/<device>/video``.
    """
    return f"{prefix}/{device}/video"


def batch_location(device: str, batch: str) -> str:
    """A batch's location relative to the storage root.

    Args:
        device: Device id.
        batch: Batch name.

    Returns:
        ``batches/<device>/<batch>``.
    """
    return f"batches/{device}/{batch}"


def _int_field(obj: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
    value = obj.get(key)
    # bool is an int in Python; a JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_MS:
        raise MalformedEventError(Malformed.BAD_FIELD, f"{key} must be an integer >= {minimum}")
    return value


def parse_ready(topic: str, payload: bytes, prefix: str) -> ReadyEvent:
    """Validate a ready event against the contract and the topic it came on.

    ``location`` must be exactly ``batches/<device>/<batch>`` with both names made of
    safe characters, so no event can point outside the storage root.

    Args:
        topic: The topic, ``<prefix>/<id>/ready``.
        payload: Raw payload.
        prefix: Topic prefix.

    Returns:
        The event.

    Raises:
        MalformedEventError: With the reason.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested JSON ("[[[[…") exhausts the parser's stack.
        raise MalformedEventError(Malformed.BAD_JSON, str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise MalformedEventError(Malformed.NOT_OBJECT, type(obj).__name__)
    if obj.get("v") != CONTRACT_VERSION or isinstance(obj.get("v"), bool):
        raise MalformedEventError(Malformed.BAD_VERSION, repr(obj.get("v"))[:50])
    device, batch, location = obj.get("device"), obj.get("batch"), obj.get("location")
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise MalformedEventError(Malformed.BAD_FIELD, "device")
    if not isinstance(batch, str) or not BATCH_NAME_RE.fullmatch(batch):
        raise MalformedEventError(Malformed.BAD_FIELD, "batch")
    frames = _int_field(obj, "frames")
    first = _int_field(obj, "first_capture_ms")
    last = _int_field(obj, "last_capture_ms")
    if last < first:
        raise MalformedEventError(Malformed.BAD_FIELD, "last_capture_ms before first_capture_ms")
    if not isinstance(location, str) or location != batch_location(device, batch):
        raise MalformedEventError(Malformed.BAD_LOCATION, repr(location)[:200])
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or parts[2] != "ready" or parts[1] != device:
        raise MalformedEventError(Malformed.TOPIC_MISMATCH, f"{topic} vs device {device}")
    return ReadyEvent(device=device, batch=batch, frames=frames, first_capture_ms=first,
                      last_capture_ms=last, location=location)


def _manifest_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MS:
        raise BadManifestError(f"{where}: {key} must be a non-negative integer")
    return value


def _optional_int(obj: Mapping[str, Any], key: str, where: str, bits: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
        raise BadManifestError(f"{where}: {key} must be an unsigned {bits}-bit integer")
    return value


def parse_manifest(raw: bytes, device: str, batch: str) -> Manifest:
    """Validate a batch's ``manifest.json``.

    Args:
        raw: File contents.
        device: The device folder the batch lives in.
        batch: The batch folder's name.

    Returns:
        The manifest, frames in video order.

    Raises:
        BadManifestError: Unreadable, or not the manifest of this batch.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadManifestError(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise BadManifestError("not an object")
    if obj.get("v") != CONTRACT_VERSION:
        raise BadManifestError(f"unsupported version {obj.get('v')!r}")
    if obj.get("device") != device or obj.get("batch") != batch:
        raise BadManifestError(f"names {obj.get('device')!r}/{obj.get('batch')!r}, "
                          f"found in {device}/{batch}")
    items = obj.get("frames")
    if not isinstance(items, list):
        raise BadManifestError("frames must be a list")
    frames: list[ManifestFrame] = []
    seen: set[str] = set()
    for idx, item in enumerate(items):
        where = f"frames[{idx}]"
        if not isinstance(item, dict):
            raise BadManifestError(f"{where}: not an object")
        file = item.get("file")
        if not isinstance(file, str) or not FRAME_FILE_RE.fullmatch(file) or ".." in file:
            raise BadManifestError(f"{where}: bad file name {str(file)[:100]!r}")
        if file in seen:
            raise BadManifestError(f"{where}: {file} listed twice")
        seen.add(file)
        frames.append(ManifestFrame(
            file=file,
            ts_ms=_manifest_int(item, "ts_ms", where),
            crc32=_optional_int(item, "crc32", where, 32),
            size=_optional_int(item, "bytes", where, 63),
        ))
    first = _manifest_int(obj, "first_capture_ms", "manifest")
    last = _manifest_int(obj, "last_capture_ms", "manifest")
    if last < first:
        raise BadManifestError("last_capture_ms before first_capture_ms")
    return Manifest(device=device, batch=batch, frames=tuple(frames),
                    first_capture_ms=first, last_capture_ms=last)


def utc_stamp(ms: int) -> str:
    """``%Y%m%dT%H%M%SZ`` of a Unix time in milliseconds.

    Args:
        ms: Milliseconds since the epoch.

    Returns:
        The compact UTC stamp.
    """
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def utc_date(ms: int) -> str:
    """``YYYY-MM-DD`` (UTC) of a Unix time in milliseconds.

    Args:
        ms: Milliseconds since the epoch.

    Returns:
        The date folder name.
    """
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


def video_stems(device: str, batch: str, first_ms: int, last_ms: int) -> tuple[str, str]:
    """The video's file stem per the storage layout, and the fallback for a name clash.

    Two batches of one device can share first and last second (tiny batches sealed by
    idle time); the second one then gets the batch's counter appended.

    Args:
        device: Device id.
        batch: Batch name.
        first_ms: ts_ms of the batch's first frame.
        last_ms: ts_ms of its last frame.

    Returns:
        ``(<id>_<first>_<last>, <id>_<first>_<last>_<counter>)``.
    """
    stem = f"{device}_{utc_stamp(first_ms)}_{utc_stamp(last_ms)}"
    counter = batch.rsplit("-", 1)[-1]
    if counter == batch or not counter:
        counter = batch
    return stem, f"{stem}_{counter}"


def video_dir(device: str, first_ms: int) -> str:
    """A video's folder relative to the root.

    Args:
        device: Device id.
        first_ms: ts_ms of the first frame.

    Returns:
        ``videos/<id>/<YYYY-MM-DD>``.
    """
    return f"videos/{device}/{utc_date(first_ms)}"


def video_event(
    *, device: str, batch: str, location: str, frames: int, frames_skipped: int,
    duration_s: float, size: int, first_capture_ms: int, last_capture_ms: int,
) -> dict[str, Any]:
    """The ``cam/<id>/video`` payload (also the ``.json`` sidecar), as the contract fixes it.

    Args:
        device: Device id.
        batch: Batch name.
        location: ``videos/<id>/<date>/<file>.mp4``.
        frames: Frames in the video.
        frames_skipped: Frames of the batch left out.
        duration_s: Playback duration.
        size: MP4 size in bytes.
        first_capture_ms: The batch's first ts_ms.
        last_capture_ms: The batch's last ts_ms.

    Returns:
        The JSON object.
    """
    return {
        "v": CONTRACT_VERSION, "device": device, "batch": batch, "location": location,
        "frames": frames, "frames_skipped": frames_skipped,
        "duration_s": round(duration_s, 3), "bytes": size, "codec": "h264",
        "first_capture_ms": first_capture_ms, "last_capture_ms": last_capture_ms,
    }


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as an exact fraction (29.97 -> 2997/100).

    Args:
        fps: Frames per second.

    Returns:
        The rate.
    """
    return Fraction(fps).limit_denominator(1001)


class Timeline:
    """Presentation times of the frames that make it into the video.

    ``fixed``: frame n shows at n/fps, whatever its capture time (a timelapse).
    ``capture``: frames show at their real capture times in milliseconds (variable
    frame rate), shifted so the first frame is at 0; equal or backwards times (an
    unsynced clock, a reboot) are nudged 1 ms after the previous frame, because a
    stream's presentation times must strictly increase.
    """

    def __init__(self, timing: Literal["fixed", "capture"], fps: float) -> None:
        self.timing = timing
        self.rate = fps_fraction(fps)
        self.time_base = 1 / self.rate if timing == "fixed" else Fraction(1, 1000)
        self._count = 0
        self._origin: int | None = None
        self._last: int | None = None
        self._last_step: int | None = None

    def next_pts(self, ts_ms: int) -> int:
        """Presentation time of the next frame, in ``time_base`` units.

        Args:
            ts_ms: The frame's capture (or arrival) time.

        Returns:
            Its pts.
        """
        if self.timing == "fixed":
            pts = self._count
        else:
            if self._origin is None:
                self._origin = ts_ms
            pts = ts_ms - self._origin
            if self._last is not None and pts <= self._last:
                pts = self._last + 1
        if self._last is not None:
            self._last_step = pts - self._last
        self._last = pts
        self._count += 1
        return pts

    def last_duration(self) -> int:
        """How long the final frame shows: one frame period, or the last capture gap.

        Returns:
            The duration in ``time_base`` units.
        """
        if self.timing == "fixed":
            return 1
        if self._last_step is not None:
            return self._last_step
        return max(1, round(1000 / self.rate))
