"""Videos into the catalog: real MP4s for tests and benchmarks, and the sidecar indexer.

``make_video`` encodes real JPEG frames with the encoder's muxer and lays the MP4, its
``.jpg`` thumbnail and ``.json`` video event out as the encoder does
(``videos/<id>/<date>/<id>_<first>_<last>.mp4``). ``index_videos`` records every video
found by its sidecar in the catalog (SHA-256, thumbnail, Ed25519 signature): the
encoder records every new video itself, so this only imports videos made before it
did (and makes test fixtures).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from camstack.jpegs import make_jpeg
from catalog import InvalidValueError, SqlCatalog, VideoRow
from catalog.signing import sha256_file, sign_video
from contract.events import MalformedEventError, VideoEvent
from encoder.muxer import EncodeOptions, FrameInput, encode_video


def _stamp(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def make_video(root: Path, device: str, start_ms: int, *, frames: int = 40,
               interval_ms: int = 1000, fps: float = 10.0, size: tuple[int, int] = (320, 240),
               counter: int = 1) -> VideoEvent:
    """Encode one real H.264 MP4 of ``frames`` frames, with its thumbnail and sidecar.

    Returns:
        The video event (its ``location`` is relative to ``root``).
    """
    times = [start_ms + i * interval_ms for i in range(frames)]
    day = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).strftime("%Y-%m-%d")
    location = f"videos/{device}/{day}/{device}_{_stamp(times[0])}_{_stamp(times[-1])}.mp4"
    out = root / location
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = [FrameInput(ts_ms=t, data=make_jpeg(size[0], size[1], seed=counter * 1000 + i))
              for i, t in enumerate(times)]
    result = encode_video(inputs, out, EncodeOptions(fps=fps, preset="ultrafast"))
    if result.thumbnail_jpeg is not None:
        out.with_suffix(".jpg").write_bytes(result.thumbnail_jpeg)
    batch = f"{device}-{_stamp(times[0])}-{counter:04d}"
    event = VideoEvent(device, batch, location, result.frames_written, result.frames_skipped,
                       result.frames_written / fps, out.stat().st_size, times[0], times[-1])
    out.with_suffix(".json").write_bytes(event.to_json())
    return event


def video_row(root: Path, event: VideoEvent, key: Ed25519PrivateKey | None,
              sha256: str | None = None) -> VideoRow:
    """The catalog row of a video on disk, signed with ``key`` when given."""
    mp4 = root / event.location
    thumb = mp4.with_suffix(".jpg")
    row = VideoRow(
        device=event.device, batch=event.batch, location=event.location,
        thumbnail=str(thumb.relative_to(root)) if thumb.exists() else None,
        frames=event.frames, skipped=event.frames_skipped, duration_s=event.duration_s,
        bytes=event.size, codec=event.codec, first_capture_ms=event.first_capture_ms,
        last_capture_ms=event.last_capture_ms, sha256=sha256 or sha256_file(mp4),
        created_ms=event.last_capture_ms)
    if key is not None:
        row = row.model_copy(update={"signature": sign_video(row, key)})
    return row


def index_videos(root: Path, catalog: SqlCatalog, key: Ed25519PrivateKey | None) -> int:
    """Record in the catalog every video of ``root`` that has a valid sidecar.

    Returns:
        How many rows were created (videos already recorded are left as they are).
    """
    created = 0
    for sidecar in sorted((root / "videos").glob("*/*/*.json")):
        if sidecar.name.startswith("."):
            continue
        try:
            event = VideoEvent.parse(sidecar.read_bytes())
        except (OSError, MalformedEventError):
            continue
        if not (root / event.location).is_file() or catalog.get_video(event.device,
                                                                      event.batch):
            continue
        try:
            created += catalog.record_video(video_row(root, event, key))
        except InvalidValueError:
            continue
    return created


def sidecar_json(event: VideoEvent) -> str:
    """The sidecar text of an event (tests)."""
    return json.dumps(event.to_obj(), sort_keys=True)
