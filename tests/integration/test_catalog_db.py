"""The catalog on SQLite and on a real PostgreSQL: the same tests on both."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from camstack.servers import PostgresHandle, start_postgres
from catalog import (
    BatchState,
    CatalogConfigError,
    CatalogUnavailableError,
    InvalidValueError,
    SealedBatch,
    SqlCatalog,
    VideoRow,
    open_catalog,
)
from catalog.migrate import load_migrations
from catalog.models import validated
from catalog.signing import load_or_create_key, sign_video, verify_video
from config.settings import CatalogSettings

pytestmark = [pytest.mark.integration, pytest.mark.servers]

B = "cam01-20261124T101500Z-0001"


def _sealed(batch: str = B, device: str = "cam01", first: int = 1000) -> SealedBatch:
    return SealedBatch(device=device, batch=batch, frames=300, first_capture_ms=first,
                       last_capture_ms=first + 299_000)


def _video(batch: str = B, device: str = "cam01", sha: str = "a" * 64) -> VideoRow:
    return validated(VideoRow, {
        "device": device, "batch": batch, "location": f"videos/{device}/{batch}.mp4",
        "thumbnail": f"videos/{device}/{batch}.jpg", "frames": 300, "skipped": 0,
        "duration_s": 10.0, "bytes": 12345, "codec": "h264", "first_capture_ms": 1000,
        "last_capture_ms": 300_000, "sha256": sha, "pack_sha256": "b" * 64,
        "created_ms": 400_000})


def test_migrate_is_idempotent(catalog: SqlCatalog) -> None:
    assert catalog.schema_version() == len(load_migrations())
    assert catalog.migrate() == []
    assert catalog.migrate() == []


def test_videos_to_expire_and_mark_deleted_are_idempotent(catalog: SqlCatalog) -> None:
    old, new = B, "cam01-20261124T101500Z-0002"
    for batch, first in ((old, 1000), (new, 10_000_000)):
        catalog.record_sealed(_sealed(batch, first=first))
        v = _video(batch).model_copy(update={
            "first_capture_ms": first, "last_capture_ms": first + 299_000,
            "location": f"videos/cam01/{batch}.mp4"})
        assert catalog.record_video(v)
    due = catalog.videos_to_expire(5_000_000)
    assert [v.batch for v in due] == [old] and due[0].deleted_ms is None
    assert catalog.mark_video_deleted("cam01", old, at_ms=6_000_000) is True
    assert catalog.mark_video_deleted("cam01", old) is False  # a repeat changes nothing
    assert catalog.mark_video_deleted("cam01", "cam01-20261124T101500Z-0009") is False
    assert catalog.videos_to_expire(5_000_000) == []
    assert [v.batch for v in catalog.videos_to_expire(10**12)] == [new]
    # The row stays (marked); listings leave it out unless asked.
    assert catalog.get_video("cam01", old).deleted_ms == 6_000_000  # type: ignore[union-attr]
    assert [v.batch for v in catalog.list_videos()] == [new]
    assert len(catalog.list_videos(include_deleted=True)) == 2
    with pytest.raises(InvalidValueError):
        catalog.videos_to_expire("soon")  # type: ignore[arg-type]


def test_full_lifecycle_under_redelivery(catalog: SqlCatalog) -> None:
    for _ in range(2):  # every call twice: the second is a no-op
        catalog.record_sealed(_sealed())
    assert catalog.get_batch("cam01", B).state == BatchState.SEALED  # type: ignore[union-attr]
    assert catalog.mark_uploaded("cam01", B, pack_key="packs/cam01/x.tar",
                                 pack_sha256="b" * 64, pack_bytes=10) is True
    assert catalog.mark_uploaded("cam01", B, pack_key="packs/cam01/x.tar",
                                 pack_sha256="b" * 64, pack_bytes=10) is False
    assert catalog.start_encoding("cam01", B) == 1
    assert catalog.start_encoding("cam01", B) == 2  # a redelivery is one more attempt
    assert catalog.record_video(_video()) is True
    assert catalog.record_video(_video()) is False
    assert catalog.record_video(_video(sha="c" * 64)) is False  # first one kept
    assert len(catalog.list_videos()) == 1
    assert catalog.get_video("cam01", B).sha256 == "a" * 64  # type: ignore[union-attr]
    # Forward only: nothing moves an encoded batch back.
    assert catalog.mark_uploaded("cam01", B, pack_key="k", pack_sha256="b" * 64,
                                 pack_bytes=1) is False
    assert catalog.start_encoding("cam01", B) is None
    assert catalog.quarantine("cam01", B, "late failure") is False
    assert catalog.mark_purged("cam01", B) is True
    assert catalog.mark_purged("cam01", B) is False
    b = catalog.get_batch("cam01", B)
    assert b is not None and b.state == BatchState.PURGED and b.attempts == 2
    assert b.pack_key == "packs/cam01/x.tar" and b.error is None


def test_video_for_unknown_batch_creates_it(catalog: SqlCatalog) -> None:
    assert catalog.record_video(_video(batch="cam02-x", device="cam02")) is True
    b = catalog.get_batch("cam02", "cam02-x")
    assert b is not None and b.state == BatchState.ENCODED


def test_quarantine(catalog: SqlCatalog) -> None:
    catalog.record_sealed(_sealed())
    assert catalog.quarantine("cam01", B, "x" * 10_000) is True
    assert catalog.quarantine("cam01", B, "again") is False
    b = catalog.get_batch("cam01", B)
    assert b is not None and b.state == BatchState.QUARANTINED and len(b.error or "") == 4000


def test_list_filters(catalog: SqlCatalog) -> None:
    for i, dev in enumerate(["cam01", "cam02", "cam01"]):
        catalog.record_sealed(_sealed(batch=f"{dev}-b{i}", device=dev, first=i * 1_000_000))
    catalog.record_video(_video(batch="cam01-b2", device="cam01"))
    assert [b.batch for b in catalog.list_batches(device="cam01")] == ["cam01-b0", "cam01-b2"]
    assert [b.batch for b in catalog.list_batches(state="sealed")] == ["cam01-b0", "cam02-b1"]
    assert [b.batch for b in catalog.list_batches(since_ms=1_200_000)] == ["cam02-b1",
                                                                          "cam01-b2"]
    assert [v.batch for v in catalog.list_videos(device="cam01")] == ["cam01-b2"]
    assert catalog.list_videos(device="cam02") == []
    assert [d.id for d in catalog.list_devices()] == ["cam01", "cam02"]
    assert len(catalog.list_batches(limit=1)) == 1


@pytest.mark.parametrize("call", [
    lambda c: c.list_batches(state="bogus"),
    lambda c: c.list_batches(device="x" * 10_000),
    lambda c: c.list_batches(limit=10**9),
    lambda c: c.list_batches(since_ms="yesterday"),
    lambda c: c.mark_uploaded("cam01", B, pack_key="k", pack_sha256="nothex", pack_bytes=1),
    lambda c: c.mark_uploaded("cam01", B, pack_key="k" * 5000, pack_sha256="a" * 64,
                              pack_bytes=1),
    lambda c: c.mark_uploaded("cam01", B, pack_key="k", pack_sha256="a" * 64,
                              pack_bytes="10"),
    lambda c: c.get_batch("cam01'; DROP TABLE batches; --", B),
    lambda c: c.record_video({"device": "cam01"}),
    lambda c: c.quarantine("cam01", B, 12),
])
def test_hostile_values_rejected(catalog: SqlCatalog, call: object) -> None:
    with pytest.raises(InvalidValueError):
        call(catalog)  # type: ignore[operator]
    assert catalog.schema_version() == len(load_migrations())


def test_concurrent_redelivery_leaves_one_row(catalog: SqlCatalog) -> None:
    catalog.record_sealed(_sealed())
    results: list[bool] = []

    def worker() -> None:
        results.append(catalog.record_video(_video()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(catalog.list_videos()) == 1


def test_signed_row_round_trip(catalog: SqlCatalog, tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "pki" / "video-signing.key")
    mp4 = b"fake mp4 bytes" * 100
    row = _video(sha=hashlib.sha256(mp4).hexdigest())
    row = row.model_copy(update={"signature": sign_video(row, key)})
    catalog.record_video(row)
    stored = catalog.get_video("cam01", B)
    assert stored is not None and verify_video(mp4, stored, key.public_key()).ok


def test_sqlite_is_wal(tmp_path: Path) -> None:
    cat = open_catalog(CatalogSettings(path=tmp_path / "c.db"))
    cat.close()
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_unopenable_path_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CatalogConfigError, match=r"catalog\.path"):
        open_catalog(CatalogSettings(path=tmp_path / "file" / "c.db"))


def test_postgres_wrong_password_named(postgres: PostgresHandle) -> None:
    with pytest.raises(CatalogConfigError, match=r"catalog\.dsn") as e:
        open_catalog(CatalogSettings(backend="postgres",
                                     dsn=postgres.dsn(password="not-the-password")))
    assert "not-the-password" not in str(e.value)


def test_postgres_unreachable_named(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(f"host={tmp_path} port=5999 dbname=x user=postgres password=s3cr3t\n")
    with pytest.raises(CatalogConfigError, match=r"catalog\.dsn_file") as e:
        open_catalog(CatalogSettings(backend="postgres", dsn_file=dsn_file,
                                     connect_timeout_s=2))
    assert "s3cr3t" not in str(e.value)


def test_postgres_stopped_mid_run_then_back() -> None:
    pg = start_postgres()
    try:
        pg.create_database("cat")
        cat = open_catalog(pg.catalog_settings("cat"))
        cat.record_sealed(_sealed())
        pg.stop(mode="immediate")
        with pytest.raises(CatalogUnavailableError):
            cat.mark_uploaded("cam01", B, pack_key="k", pack_sha256="b" * 64, pack_bytes=1)
        pg.start()
        assert cat.mark_uploaded("cam01", B, pack_key="k", pack_sha256="b" * 64,
                                 pack_bytes=1) is True
        assert cat.get_batch("cam01", B).state == BatchState.UPLOADED  # type: ignore[union-attr]
        cat.close()
    finally:
        pg.close()
