"""Names of the shared storage layout (docs/storage.md). Pure: no I/O.

The ingestor writes and the encoder reads these names; only this module spells them out.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

FRAMES_DIR = "frames"
BATCHES_DIR = "batches"
VIDEOS_DIR = "videos"
QUARANTINE_DIR = "quarantine"
STATE_DIR = "state"
MANIFEST = "manifest.json"
BATCH_FRAMES = "frames"
TMP_PREFIX = "."
"""Temporary files and folders start with a dot; every scanner skips dot names."""

FRAME_NAME_RE = re.compile(r"(\d{13})_([0-9a-f]{8})_(\d{10})\.jpg")
FRAME_FILE_RE = re.compile(r"frames/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}\.jpg")
"""A frame's path inside its batch folder as a manifest names it: one level, no ``..``."""
BATCH_NAME_RE = re.compile(
    r"(?P<device>[A-Za-z0-9_-]{1,32})-(?P<stamp>\d{8}T\d{6}Z)-(?P<n>\d{4,})"
)

FrameKey = tuple[str, int, int]
"""(device id, boot_id, frame_seq): the contract's identity of a frame."""


CAPTURE_MIN_MS = 1_577_836_800_000
"""2020-01-01T00:00:00Z: a synchronised clock never reads earlier than this."""
CAPTURE_MAX_AHEAD_MS = 86_400_000
"""A synchronised capture time may run at most one day ahead of the ingestor's clock."""
CAPTURE_MAX_MS = 2**63 - 1
"""The largest ``capture_ms`` a manifest may carry (a signed 64-bit integer)."""


class FrameTime(NamedTuple):
    """How one frame's time is recorded: see :func:`frame_time`."""

    capture_ms: int
    clock_synced: bool
    ts_ms: int


def frame_time(capture_ms: int, clock_synced: bool, arrival_ms: int) -> FrameTime:
    """The times a frame is recorded and filed under, by the contract's plausibility rule.

    A device's clock is trusted only when it says it is synchronised *and* its capture
    time lies in ``[CAPTURE_MIN_MS, arrival_ms + CAPTURE_MAX_AHEAD_MS]``; such a frame is
    filed under its capture time. Every other frame is filed under its arrival time and
    recorded as unsynchronised. A ``capture_ms`` beyond what a manifest may hold is
    recorded as 0 (unknown). The window also keeps file names at 13 digits
    (``FRAME_NAME_RE``) and dates inside what ``datetime`` can format.

    Args:
        capture_ms: Device capture time from the chunk header (u64).
        clock_synced: The header's clock flag.
        arrival_ms: When the ingestor completed the frame (Unix ms).

    Returns:
        The recorded capture time, whether it is trusted, and the filing time.
    """
    if clock_synced and CAPTURE_MIN_MS <= capture_ms <= arrival_ms + CAPTURE_MAX_AHEAD_MS:
        return FrameTime(capture_ms, True, capture_ms)
    return FrameTime(capture_ms if capture_ms <= CAPTURE_MAX_MS else 0, False, arrival_ms)


def frame_file_name(ts_ms: int, boot_id: int, frame_seq: int) -> str:
    """``<ts_ms:013d>_<boot_id:08x>_<frame_seq:010d>.jpg``: sorts in the contract's order."""
    return f"{ts_ms:013d}_{boot_id:08x}_{frame_seq:010d}.jpg"


def parse_frame_file_name(name: str) -> tuple[int, int, int] | None:
    """Inverse of :func:`frame_file_name`.

    Args:
        name: A file name.

    Returns:
        ``(ts_ms, boot_id, frame_seq)`` or None when ``name`` is not a frame file.
    """
    m = FRAME_NAME_RE.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2), 16), int(m.group(3))


def utc_date(ts_ms: int) -> str:
    """``YYYY-MM-DD`` (UTC) of a Unix millisecond time."""
    # Unix time has exactly 86,400,000 ms a day; asked once per stored frame.
    return _utc_day(ts_ms // 86_400_000)


@functools.lru_cache(maxsize=64)
def _utc_day(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, tz=dt.UTC).strftime("%Y-%m-%d")


def utc_stamp(ts_ms: int) -> str:
    """``%Y%m%dT%H%M%SZ`` (UTC) of a Unix millisecond time."""
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def frame_rel_path(device: str, ts_ms: int, boot_id: int, frame_seq: int) -> str:
    """``frames/<id>/<YYYY-MM-DD>/<name>`` relative to the storage root."""
    return f"{FRAMES_DIR}/{device}/{utc_date(ts_ms)}/{frame_file_name(ts_ms, boot_id, frame_seq)}"


def batch_name(device: str, first_ts_ms: int, counter: int) -> str:
    """``<id>-<%Y%m%dT%H%M%SZ of first frame>-<NNNN>``."""
    return f"{device}-{utc_stamp(first_ts_ms)}-{counter:04d}"


def parse_batch_counter(name: str, device: str) -> int | None:
    """The per-device counter in a batch name, or None when it is not ``device``'s batch."""
    m = BATCH_NAME_RE.fullmatch(name)
    if m is None or m.group("device") != device:
        return None
    return int(m.group("n"))


def batch_location(device: str, batch: str) -> str:
    """``batches/<id>/<batch>``: the ``location`` of a ready event."""
    return f"{BATCHES_DIR}/{device}/{batch}"


PACKS_PREFIX = "packs/"
"""Default key prefix of batch packs in the object store (``store.pack_prefix``)."""


def pack_key(device: str, batch: str, prefix: str = PACKS_PREFIX) -> str:
    """``packs/<id>/<batch>.tar``: the object key of a sealed batch's pack.

    Args:
        device: Device id.
        batch: Batch name.
        prefix: Key prefix ending with ``/`` (``store.pack_prefix``).

    Returns:
        The key.

    Raises:
        ValueError: On a device or batch name that is not a safe single segment, or a
            prefix not ending with ``/``.
    """
    if not prefix.endswith("/") or prefix.startswith("/"):
        raise ValueError(f"pack prefix must end with '/': {prefix[:80]!r}")
    for part in (device, batch):
        if not BATCH_NAME_SAFE_RE.fullmatch(part) or part.startswith("."):
            raise ValueError(f"unsafe name for a pack key: {part[:80]!r}")
    return f"{prefix}{device}/{batch}.tar"


BATCH_NAME_SAFE_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What the ingestor knows of one stored frame (a manifest entry)."""

    device: str
    boot_id: int
    frame_seq: int
    capture_ms: int
    clock_synced: bool
    ts_ms: int
    size: int
    crc32: int

    @property
    def key(self) -> FrameKey:
        """The frame's identity."""
        return (self.device, self.boot_id, self.frame_seq)

    @property
    def name(self) -> str:
        """File name, also the sort key within a device."""
        return frame_file_name(self.ts_ms, self.boot_id, self.frame_seq)

    @property
    def rel_path(self) -> str:
        """Path under the root while not yet sealed."""
        return frame_rel_path(self.device, self.ts_ms, self.boot_id, self.frame_seq)


def video_stems(device: str, batch: str, first_ms: int, last_ms: int) -> tuple[str, str]:
    """A video's file stem per the storage layout, and the fallback for a name clash.

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
    """``videos/<id>/<YYYY-MM-DD>``: a video's folder relative to the root."""
    return f"{VIDEOS_DIR}/{device}/{utc_date(first_ms)}"
