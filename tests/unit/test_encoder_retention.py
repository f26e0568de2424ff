"""Retention: the pure plan, then a sweep over a real folder of videos."""

from __future__ import annotations

import json
import os
from pathlib import Path

from catalog import SealedBatch, VideoRow, open_catalog
from config.settings import CatalogSettings, RetentionSettings
from contract.layout import video_dir, video_stems
from encoder.metrics import EncoderMetrics
from encoder.retention import DAY_MS, DiskUsage, VideoEntry, plan, sweep

NOW_MS = 1_800_000_000_000


def entry(name: str, age_days: float, size: int = 100) -> VideoEntry:
    t = int(NOW_MS - age_days * DAY_MS)
    return VideoEntry(mp4=Path(f"/v/{name}.mp4"), first_ms=t - 60_000, last_ms=t, size=size)


def names(result: list[tuple[VideoEntry, str]]) -> list[tuple[str, str]]:
    return [(e.mp4.stem, rule) for e, rule in result]


def test_nothing_configured_deletes_nothing() -> None:
    es = [entry("a", 400), entry("b", 1)]
    assert plan(es, now_ms=NOW_MS, settings=RetentionSettings(),
                disk=DiskUsage(1000, 999)) == []


def test_age_rule_deletes_only_older_videos_oldest_first() -> None:
    es = [entry("new", 1), entry("old", 40), entry("older", 50), entry("edge", 29.9)]
    got = plan(es, now_ms=NOW_MS, settings=RetentionSettings(max_age_days=30), disk=None)
    assert names(got) == [("older", "max_age"), ("old", "max_age")]


def test_disk_rule_deletes_oldest_until_under_the_watermark() -> None:
    es = [entry("d", 1, 100), entry("a", 4, 100), entry("c", 2, 100), entry("b", 3, 100)]
    s = RetentionSettings(max_disk_percent=80)
    # 950 of 1000 used, limit 800: two videos of 100 bytes must go, the oldest two.
    got = plan(es, now_ms=NOW_MS, settings=s, disk=DiskUsage(1000, 950))
    assert names(got) == [("a", "max_disk_percent"), ("b", "max_disk_percent")]
    assert plan(es, now_ms=NOW_MS, settings=s, disk=DiskUsage(1000, 800)) == []


def test_rules_combine_without_deleting_twice() -> None:
    es = [entry("a", 40, 100), entry("b", 3, 100), entry("c", 1, 100)]
    s = RetentionSettings(max_age_days=30, max_disk_percent=80)
    got = plan(es, now_ms=NOW_MS, settings=s, disk=DiskUsage(1000, 1000))
    assert names(got) == [("a", "max_age"), ("b", "max_disk_percent")]


def make_video(videos: Path, device: str, first_ms: int, last_ms: int) -> Path:
    folder = videos.parent / video_dir(device, first_ms)
    folder.mkdir(parents=True, exist_ok=True)
    stem = video_stems(device, f"{device}-x-0001", first_ms, last_ms)[0]
    mp4 = folder / f"{stem}.mp4"
    mp4.write_bytes(b"\0" * 1000)
    mp4.with_suffix(".jpg").write_bytes(b"\0" * 10)
    mp4.with_suffix(".json").write_text(json.dumps(
        {"first_capture_ms": first_ms, "last_capture_ms": last_ms}))
    return mp4


def test_sweep_deletes_video_thumbnail_and_sidecar(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    old = make_video(videos, "cam01", NOW_MS - 40 * DAY_MS, NOW_MS - 40 * DAY_MS + 1000)
    new = make_video(videos, "cam01", NOW_MS - DAY_MS, NOW_MS - DAY_MS + 1000)
    partial = old.parent / f".{old.name}.partial"
    partial.write_bytes(b"x")
    expected_freed = sum(p.stat().st_size for p in (old, old.with_suffix(".jpg"),
                                                    old.with_suffix(".json")))
    metrics = EncoderMetrics()
    deleted = sweep(videos, RetentionSettings(max_age_days=30), metrics, now=NOW_MS / 1000)
    assert [d.mp4 for d in deleted] == [old]
    assert not any(p.exists() for p in (old, old.with_suffix(".jpg"), old.with_suffix(".json")))
    assert new.exists() and new.with_suffix(".json").exists()
    assert partial.exists()  # a write in progress is not retention's business
    assert metrics.retention_deleted.labels("max_age")._value.get() == 1
    assert metrics.retention_bytes._value.get() == expected_freed


def test_sweep_marks_the_deleted_videos_catalog_row(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    old = make_video(videos, "cam01", NOW_MS - 40 * DAY_MS, NOW_MS - 40 * DAY_MS + 1000)
    cat = open_catalog(CatalogSettings(path=tmp_path / "catalog.sqlite3"))
    try:
        batch = "cam01-20261124T101500Z-0001"
        cat.record_sealed(SealedBatch(device="cam01", batch=batch, frames=1,
                                      first_capture_ms=NOW_MS - 40 * DAY_MS,
                                      last_capture_ms=NOW_MS - 40 * DAY_MS + 1000))
        cat.record_video(VideoRow(
            device="cam01", batch=batch, location=old.relative_to(tmp_path).as_posix(),
            frames=1, skipped=0, duration_s=1.0, bytes=10, codec="h264",
            first_capture_ms=NOW_MS - 40 * DAY_MS, last_capture_ms=NOW_MS - 40 * DAY_MS + 1000,
            sha256="a" * 64, created_ms=NOW_MS - 40 * DAY_MS))
        assert sweep(videos, RetentionSettings(max_age_days=30), now=NOW_MS / 1000, catalog=cat)
        row = cat.get_video("cam01", batch)
        assert row is not None and row.deleted_ms is not None
        assert cat.list_videos() == []
    finally:
        cat.close()


def test_sweep_by_disk_watermark_uses_measured_usage(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    a = make_video(videos, "cam01", NOW_MS - 3 * DAY_MS, NOW_MS - 3 * DAY_MS + 1)
    b = make_video(videos, "cam02", NOW_MS - 2 * DAY_MS, NOW_MS - 2 * DAY_MS + 1)
    c = make_video(videos, "cam01", NOW_MS - 1 * DAY_MS, NOW_MS - 1 * DAY_MS + 1)
    # Each video with companions is ~1.1 kB: two must go to get from 3100 under 2000.
    deleted = sweep(videos, RetentionSettings(max_disk_percent=50), None, now=NOW_MS / 1000,
                    disk_usage=lambda _p: DiskUsage(total=4000, used=3100))
    assert [d.mp4 for d in deleted] == [a, b]
    assert c.exists()


def test_sweep_removes_old_orphan_sidecars_only(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    folder = videos / "cam01" / "2026-01-01"
    folder.mkdir(parents=True)
    stale, fresh = folder / "cam01_a_b.json", folder / "cam01_c_d.json"
    stale.write_text("{}")
    fresh.write_text("{}")
    old = NOW_MS / 1000 - 7200
    os.utime(stale, (old, old))
    os.utime(fresh, (NOW_MS / 1000, NOW_MS / 1000))
    sweep(videos, RetentionSettings(max_age_days=30), None, now=NOW_MS / 1000)
    assert not stale.exists()
    assert fresh.exists()
