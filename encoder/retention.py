"""Deleting old videos: by age, and oldest first above a disk usage watermark.

``plan()`` is pure (entries and numbers in, a deletion list out); ``sweep()`` lists the
videos, asks for the plan and deletes: the MP4 first, then its thumbnail and sidecar,
so a crash half-way leaves at worst a sidecar without video, which the next sweep
removes once it is old enough not to belong to a video being written right now.

``sweep_store()`` is retention on the object store (S3 backend): by age only, driven
by the catalog's video rows, each marked ``deleted_ms`` once its objects are gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from catalog import CatalogError, SqlCatalog, VideoRow
from config.settings import RetentionSettings
from encoder.metrics import EncoderMetrics
from objstore import ObjectStore, ObjectStoreError

log = structlog.get_logger("encoder.retention")

ORPHAN_GRACE_S = 3600.0
"""A sidecar without its MP4 is left alone this long: it may be a video being written."""

DAY_MS = 86_400_000

UNAVAILABLE = (ObjectStoreError, CatalogError)
"""What :func:`sweep_store` raises when the store or the catalog is away (retry later)."""


@dataclass(frozen=True)
class VideoEntry:
    """One video with its companions, as found on disk."""

    mp4: Path
    first_ms: int
    last_ms: int
    size: int
    orphan: bool = False


class DiskUsage(NamedTuple):
    """Total and used bytes of the file system holding the videos."""

    total: int
    used: int


def plan(entries: Sequence[VideoEntry], *, now_ms: int, settings: RetentionSettings,
         disk: DiskUsage | None) -> list[tuple[VideoEntry, str]]:
    """Which videos to delete, oldest first, and by which rule.

    Args:
        entries: Every video (any order).
        now_ms: Current time, epoch milliseconds.
        settings: The retention rules.
        disk: Current usage, or None when the watermark rule is off.

    Returns:
        ``(entry, rule)`` pairs, rule ``max_age`` or ``max_disk_percent``.
    """
    ordered = sorted(entries, key=lambda e: (e.first_ms, e.mp4.name))
    out: list[tuple[VideoEntry, str]] = []
    chosen: set[Path] = set()
    if settings.max_age_days is not None:
        cutoff = now_ms - settings.max_age_days * DAY_MS
        for e in ordered:
            if e.last_ms < cutoff:
                out.append((e, "max_age"))
                chosen.add(e.mp4)
    if settings.max_disk_percent is not None and disk is not None and disk.total > 0:
        used = disk.used - sum(e.size for e, _ in out)
        limit = disk.total * settings.max_disk_percent / 100
        for e in ordered:
            if used <= limit:
                break
            if e.mp4 in chosen or e.orphan:
                continue
            out.append((e, "max_disk_percent"))
            chosen.add(e.mp4)
            used -= e.size
    return out


def _companions(mp4: Path) -> list[Path]:
    return [mp4, mp4.with_suffix(".jpg"), mp4.with_suffix(".json")]


def _size(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def list_videos(videos_root: Path, *, now: float | None = None) -> list[VideoEntry]:
    """Every finished video under ``videos/``, plus stale sidecars without an MP4.

    Times come from the ``.json`` sidecar; a video without one falls back to its
    file's modification time.

    Args:
        videos_root: ``<root>/videos``.
        now: Current time (seconds), for the orphan grace period.

    Returns:
        The entries.
    """
    now = time.time() if now is None else now
    entries: list[VideoEntry] = []
    if not videos_root.is_dir():
        return entries
    seen: set[Path] = set()
    for mp4 in videos_root.glob("*/*/*.mp4"):
        if mp4.name.startswith("."):
            continue
        seen.add(mp4)
        first_ms = last_ms = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            obj: Any = json.loads(mp4.with_suffix(".json").read_bytes())
            first_ms, last_ms = int(obj["first_capture_ms"]), int(obj["last_capture_ms"])
        if first_ms is None or last_ms is None:
            try:
                first_ms = last_ms = int(mp4.stat().st_mtime * 1000)
            except OSError:
                continue
        entries.append(VideoEntry(mp4=mp4, first_ms=first_ms, last_ms=last_ms,
                                  size=_size(_companions(mp4))))
    for side in videos_root.glob("*/*/*.json"):
        mp4 = side.with_suffix(".mp4")
        if side.name.startswith(".") or mp4 in seen:
            continue
        try:
            age = now - side.stat().st_mtime
        except OSError:
            continue
        if age >= ORPHAN_GRACE_S:
            entries.append(VideoEntry(mp4=mp4, first_ms=0, last_ms=0,
                                      size=_size(_companions(mp4)), orphan=True))
    return entries


def _remove_empty_date_dirs(videos_root: Path, today: str) -> None:
    # Today's and yesterday's folders may be about to receive a video: left alone.
    yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
    for date_dir in videos_root.glob("*/*"):
        if date_dir.is_dir() and date_dir.name < yesterday:
            with contextlib.suppress(OSError):
                date_dir.rmdir()  # only succeeds when empty


def _mark_row(catalog: SqlCatalog, location: str) -> None:
    """Mark the catalog row of a deleted local video (best effort: files come first)."""
    try:
        row = catalog.video_by_location(location)
        if row is not None:
            catalog.mark_video_deleted(row.device, row.batch)
    except CatalogError as exc:
        log.warning("retention_row_not_marked", video=location, error=str(exc)[:300])


def sweep(videos_root: Path, settings: RetentionSettings, metrics: EncoderMetrics | None = None,
          *, now: float | None = None,
          disk_usage: Callable[[Path], DiskUsage] | None = None,
          catalog: SqlCatalog | None = None) -> list[VideoEntry]:
    """Apply the retention rules once.

    Args:
        videos_root: ``<root>/videos``.
        settings: The rules.
        metrics: Counters to update.
        now: Current time in seconds (tests).
        disk_usage: Usage of the file system holding a path (tests); default
            ``shutil.disk_usage``.
        catalog: When given, each deleted video's row (found by its location) gets
            ``deleted_ms``; a catalog outage leaves the row unmarked and is logged.

    Returns:
        The entries deleted.
    """
    now = time.time() if now is None else now
    entries = list_videos(videos_root, now=now)
    orphans = [e for e in entries if e.orphan]
    disk: DiskUsage | None = None
    if settings.max_disk_percent is not None and videos_root.exists():
        if disk_usage is None:
            u = shutil.disk_usage(videos_root)
            disk = DiskUsage(total=u.total, used=u.used)
        else:
            disk = disk_usage(videos_root)
    deleted: list[VideoEntry] = []
    for entry, rule in [*((o, "orphan") for o in orphans),
                        *plan([e for e in entries if not e.orphan], now_ms=int(now * 1000),
                              settings=settings, disk=disk)]:
        freed = 0
        for p in _companions(entry.mp4):
            try:
                size = p.stat().st_size
                p.unlink()
                freed += size
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("retention_delete_failed", path=str(p), error=str(exc))
        location = entry.mp4.relative_to(videos_root.parent).as_posix()
        log.info("video_deleted", rule=rule, video=location, bytes=freed,
                 last_capture_ms=entry.last_ms)
        if catalog is not None and not entry.orphan:
            _mark_row(catalog, location)
        if metrics is not None:
            metrics.retention_deleted.labels(rule).inc()
            metrics.retention_bytes.inc(freed)
        deleted.append(entry)
    if deleted:
        _remove_empty_date_dirs(videos_root, dt.datetime.fromtimestamp(now, dt.UTC)
                                .date().isoformat())
    return deleted


# --- the object store (``store.backend = "s3"``) ----------------------------------------


def _video_keys(row: VideoRow) -> list[str]:
    """The video's objects: MP4 first, then thumbnail and sidecar (same stem)."""
    stem = row.location.removesuffix(".mp4")
    keys = [row.location, f"{stem}.jpg", f"{stem}.json"]
    if row.thumbnail and row.thumbnail not in keys:
        keys.append(row.thumbnail)
    return keys


def sweep_store(store: ObjectStore, catalog: SqlCatalog, settings: RetentionSettings,
                metrics: EncoderMetrics | None = None, *, now: float | None = None,
                stop: threading.Event | None = None, page: int = 500) -> list[VideoRow]:
    """Apply ``max_age_days`` to the videos in the object store, driven by the catalog.

    The catalog says which videos are due (``videos_to_expire``: one indexed query, no
    listing of the bucket); for each, the MP4, the thumbnail and the sidecar are deleted
    (deleting a missing key succeeds), then the row gets ``deleted_ms``. A crash or an
    outage half-way leaves the row unmarked, and the next sweep deletes again and marks
    it: idempotent, and several encoders may sweep at once (only the one that marks the
    row counts it). ``max_disk_percent`` does not apply (the settings refuse it with S3).

    Args:
        store: The object store.
        catalog: The catalog.
        settings: The rules (only ``max_age_days`` is used).
        metrics: Counters to update.
        now: Current time in seconds (tests).
        stop: Stop between videos when set.
        page: Rows fetched per query.

    Returns:
        The rows this sweep marked deleted.

    Raises:
        ObjectStoreError: The store failed (the sweep stops; the next one resumes).
        CatalogError: The catalog failed (likewise).
    """
    if settings.max_age_days is None:
        return []
    now = time.time() if now is None else now
    cutoff = int(now * 1000) - int(settings.max_age_days * DAY_MS)
    deleted: list[VideoRow] = []
    seen: set[tuple[str, str]] = set()
    while stop is None or not stop.is_set():
        due = [r for r in catalog.videos_to_expire(cutoff, limit=page)
               if (r.device, r.batch) not in seen]
        if not due:
            break
        for row in due:
            if stop is not None and stop.is_set():
                break
            seen.add((row.device, row.batch))
            for key in _video_keys(row):
                store.delete(key)
            if not catalog.mark_video_deleted(row.device, row.batch):
                continue  # another encoder's sweep marked it first
            log.info("video_deleted", rule="max_age", video=row.location, device=row.device,
                     batch=row.batch, bytes=row.bytes, last_capture_ms=row.last_capture_ms,
                     backend="s3")
            if metrics is not None:
                metrics.retention_deleted.labels("max_age").inc()
                metrics.retention_bytes.inc(row.bytes)
            deleted.append(row)
    return deleted
