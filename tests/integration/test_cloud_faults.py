"""Faults of the object store under the real services, and retention on S3 (issue 12).

Real SeaweedFS (``weed mini``), real SQLite and PostgreSQL, the real ``python -m
ingestor`` and ``python -m encoder``; the store's faults come from SIGKILLs of SeaweedFS
and from :class:`S3Proxy`, a TCP path in front of it that holds, slows or refuses. Every
wait is for a positive signal (a log event, a proxy event, an MQTT message, a row).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg
from camstack.mqttwait import Collector
from camstack.procs import scrape
from camstack.servers import PostgresHandle, SeaweedHandle
from catalog import BatchState, SealedBatch, SqlCatalog, VideoRow, open_catalog
from catalog.signing import load_public_key, verify_video
from config.settings import CatalogSettings, RetentionSettings
from contract.layout import pack_key
from encoder import retention
from encoder.cloud import BatchRef, encode_from_store
from encoder.metrics import EncoderMetrics
from encoder.muxer import probe_video
from objstore import S3Store
from tests.integration.test_cloud import (
    T0,
    Stack,
    _job,
    batch_folders,
    publish_frames,
    store_section,
    uid,
    wait_until,
)
from tests.support.faults import TcpProxy, _Pair

pytestmark = [pytest.mark.integration, pytest.mark.servers]

DAY_MS = 86_400_000
_REQUEST = re.compile(rb"(GET|PUT|HEAD|DELETE|POST) (/[^ ?]*)")


class S3Proxy(TcpProxy):
    """A :class:`TcpProxy` in front of SeaweedFS that can hold, slow down or refuse.

    - :meth:`hold`: the response to the first request matching a method and a path
      prefix is passed on up to ``after`` bytes, the rest is held back (never sent) and
      :attr:`holding` is set: the client is provably in the middle of that request.
    - :attr:`delay_s`: every piece of data, both ways, waits this long (a slow store;
      above the client's read timeout, a stalled one).
    - :meth:`fail_on`: from the first request matching a method and path prefix on,
      the store is away: open connections are reset and new ones refused
      (``refuse``), or every answer is delayed by :attr:`stall_s` (``stall``).
    - :attr:`seen`: requests (method, first path segment after the bucket) passed on.
    """

    def __init__(self, host: str, port: int, bucket: str) -> None:
        self.bucket = bucket
        self.holding = threading.Event()
        self.failing = threading.Event()
        self.delay_s = 0.0
        self.stall_s = 0.0
        self.seen: Counter[tuple[str, str]] = Counter()
        self.delayed: Counter[tuple[str, str]] = Counter()
        self._hold: tuple[str, str, int, str] | None = None
        self._held: _Pair | None = None
        self._passed = 0
        self._fail: tuple[str, str, str] | None = None
        self._last: dict[int, tuple[str, str]] = {}
        super().__init__(host, port)

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def hold(self, method: str, prefix: str, after: int = 0, suffix: str = "") -> None:
        """Hold the response to the next ``method /<bucket>/<prefix>…<suffix>`` after
        ``after`` bytes."""
        self.holding.clear()
        self._hold = (method, prefix, after, suffix)
        self._held = None
        self._passed = 0

    def fail_on(self, method: str, prefix: str, mode: str) -> None:
        """Go away (``refuse`` or ``stall``) at the next ``method /<bucket>/<prefix>…``."""
        assert mode in ("refuse", "stall")
        self._fail = (method, prefix, mode)

    def recover(self) -> None:
        """Answer normally again."""
        self._fail = None
        self.stall_s = 0.0
        self.failing.clear()
        self.heal()

    def _go_away(self, mode: str) -> None:
        self.failing.set()
        if mode == "stall":
            self.stall_s = 4.0
            return
        self._cut = True  # new connections refused
        with self._lock:
            for p in self._pairs:
                p.close()

    def _kind(self, path: bytes) -> tuple[str, str]:
        parts = path.decode(errors="replace").lstrip("/").split("/")
        return parts[1] if len(parts) > 1 and parts[0] == self.bucket else "", "/".join(parts[1:])

    def _forward(self, pair: _Pair, src: socket.socket,
                 data: bytes) -> tuple[bytes, Callable[[], None] | None]:
        if src is pair.client:
            m = _REQUEST.match(data)
            if m is not None:
                method = m.group(1).decode()
                top, rest = self._kind(m.group(2))
                self._last[id(pair)] = (method, top)
                self.seen[(method, top)] += 1
                if self._hold is not None and self._held is None and method == self._hold[0] \
                        and rest.startswith(self._hold[1]) and rest.endswith(self._hold[3]):
                    self._held = pair
                if self._fail is not None and method == self._fail[0] \
                        and rest.startswith(self._fail[1]):
                    mode = self._fail[2]
                    self._fail = None
                    self._go_away(mode)
                    if mode == "refuse":
                        return b"", None
        if self.delay_s:
            self.delayed[self._last.get(id(pair), ("", ""))] += 1
            time.sleep(self.delay_s)
        if src is pair.upstream:
            if self.stall_s:
                time.sleep(self.stall_s)
            if pair is self._held and self._hold is not None:
                interim = b""
                if data.startswith(b"HTTP/1.1 100"):  # "100 Continue" is not the answer
                    end = data.find(b"\r\n\r\n") + 4
                    interim, data = data[:end], data[end:]
                    if not data:
                        return interim, None
                room = max(0, self._hold[2] - self._passed)
                self._passed += min(room, len(data))
                if len(data) > room:
                    self._hold = None
                    self.holding.set()
                return interim + data[:room], None
            if pair is self._held and self._hold is None:
                return b"", None  # held back for good
        return data, None


def _proxied(h: SeaweedHandle, proxy: S3Proxy, bucket: str, **s3: Any) -> dict[str, Any]:
    sec = store_section(h, bucket)
    sec["s3"].update({"endpoint_url": proxy.endpoint, **s3})
    return sec


def _enc_events(st: Stack, name: str) -> list[dict[str, Any]]:
    return [e for e in st.enc.events() if e.get("event") == name]


def _audit_store(store: S3Store, cat: SqlCatalog, device: str, acked: int, batches: int,
                 pub_key: bytes) -> list[VideoRow]:
    """Nothing lost, nothing twice, nothing orphaned: the bucket holds exactly the videos
    of the rows (MP4, thumbnail, sidecar each), no pack, no quarantine; every row purged."""
    vids = cat.list_videos(device=device)
    assert len(vids) == batches and len({v.batch for v in vids}) == batches
    assert sum(v.frames for v in vids) == acked, "acknowledged frames lost or duplicated"
    pub = load_public_key(pub_key)
    expected = set()
    for v in vids:
        mp4 = store.get_bytes(v.location)
        assert probe_video(io.BytesIO(mp4)).frames == v.frames
        assert verify_video(mp4, v, pub).ok, "the MP4 in the store is the one the row signs"
        stem = v.location.removesuffix(".mp4")
        expected |= {v.location, f"{stem}.jpg", f"{stem}.json"}
    keys = {o.key for o in store.list("")}
    assert {k for k in keys if device in k} == expected, "orphan or missing objects"
    rows = cat.list_batches(device=device)
    assert len(rows) == batches and all(r.state is BatchState.PURGED for r in rows)
    return vids


def _quiet(st: Stack) -> None:
    """Nothing left on either service's disk: batches released, scratch cleaned."""
    wait_until(lambda: batch_folders(st.ing_root) == [], 30, "local batches released")
    uploads = st.ing_root / "state" / "ingestor" / "uploads"
    assert not uploads.is_dir() or not [p for p in uploads.iterdir()
                                        if not p.name.startswith(".")]
    scratch = st.enc_root / "state" / "encoder" / "scratch"
    wait_until(lambda: not scratch.is_dir() or not list(scratch.iterdir()), 30,
               "encoder scratch cleaned")


# -- 1. SeaweedFS SIGKILLed while the encoder downloads a pack -------------------------


def test_seaweedfs_killed_during_encoder_download_converges(
        broker: BrokerHandle, fresh_seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    h = fresh_seaweedfs
    proxy = S3Proxy("127.0.0.1", h.ports["s3"], h.bucket)
    cat_path = tmp_path / "catalog.sqlite3"
    # The ingestor talks to SeaweedFS directly, the encoder through the proxy.
    st = Stack(broker, tmp_path, store_section(h, h.bucket), {"path": str(cat_path)},
               enc_store=_proxied(h, proxy, h.bucket))
    proxy.hold("GET", "packs/", after=4096)
    st.ing.start()
    st.enc.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        watcher = broker.client(st.op, client_id=st.op)
        col = Collector(watcher)
        col.subscribe(f"cam/{d}/video")
        acked = publish_frames(broker, d, 12)
        # The encoder has 4 KiB of a pack and waits for the rest: kill the store now.
        assert proxy.holding.wait(60), st.enc.log_path.read_text()[-3000:]
        held = [e for e in st.enc.events() if e.get("event") == "encode_started"]
        h.stop(kill=True)
        failed = st.enc.wait_event("pack_download_failed", 30)
        assert not held or failed["batch"] not in {e["batch"] for e in held}
        h.start()
        assert col.wait_for(lambda ms: len({json.loads(m.payload)["batch"] for m in ms}) >= 2,
                            120), st.enc.log_path.read_text()[-3000:]
        store = S3Store(h.s3_settings())
        cat = open_catalog(CatalogSettings(path=cat_path))
        try:
            wait_until(lambda: all(b.state is BatchState.PURGED
                                   for b in cat.list_batches(device=d)), 30, "purged")
            _audit_store(store, cat, d, len(acked), 2,
                         (tmp_path / "pki" / "video-signing.pub").read_bytes())
            # The interrupted download was not an attempt: one start per batch.
            assert all(b.attempts == 1 for b in cat.list_batches(device=d))
        finally:
            cat.close()
            store.close()
        # Per batch: the row (video_written) before the pack's deletion (batch_purged).
        order = [(e["event"], e["batch"]) for e in st.enc.events()
                 if e.get("event") in ("video_written", "batch_purged")]
        for b in {x[1] for x in order}:
            assert order.index(("video_written", b)) < order.index(("batch_purged", b))
        assert len(_enc_events(st, "video_written")) == 2, "one video per batch"
        _quiet(st)
        watcher.disconnect()
        watcher.loop_stop()
        assert st.enc.stop() == 0
        assert st.ing.stop() == 0
    finally:
        st.stop()
        proxy.close()


# -- 2. A slow store, then a store that stalls or refuses ------------------------------


def test_slow_store_uploads_and_encodes_converge(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    bucket = "slow-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    proxy = S3Proxy("127.0.0.1", seaweedfs.ports["s3"], bucket)
    sec = _proxied(seaweedfs, proxy, bucket, read_timeout_s=3)
    cat_path = tmp_path / "catalog.sqlite3"
    st = Stack(broker, tmp_path, sec, {"path": str(cat_path)})
    st.ing.start()
    st.enc.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        proxy.delay_s = 0.25  # every piece of data, both ways: slow, under the timeout
        d = f"cam{uid()}"
        watcher = broker.client(st.op, client_id=st.op)
        col = Collector(watcher)
        col.subscribe(f"cam/{d}/video")
        acked = publish_frames(broker, d, 12)
        assert col.wait_for(lambda ms: len({json.loads(m.payload)["batch"] for m in ms}) >= 2,
                            120), st.enc.log_path.read_text()[-3000:]
        # The slowness was on the ingestor's uploads and the encoder's downloads/uploads.
        for kind in (("PUT", "packs"), ("GET", "packs"), ("PUT", "videos")):
            assert proxy.delayed[kind] >= 2, (kind, proxy.delayed)
        proxy.delay_s = 0
        store = S3Store(seaweedfs.s3_settings(bucket=bucket))
        cat = open_catalog(CatalogSettings(path=cat_path))
        try:
            wait_until(lambda: all(b.state is BatchState.PURGED
                                   for b in cat.list_batches(device=d)), 30, "purged")
            _audit_store(store, cat, d, len(acked), 2,
                         (tmp_path / "pki" / "video-signing.pub").read_bytes())
        finally:
            cat.close()
            store.close()
        _quiet(st)
        watcher.disconnect()
        watcher.loop_stop()
    finally:
        st.stop()
        proxy.close()


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_erroring_store_during_uploads_and_encodes_nothing_lost(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path, mode: str) -> None:
    bucket = f"{mode}-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    proxy = S3Proxy("127.0.0.1", seaweedfs.ports["s3"], bucket)
    sec = _proxied(seaweedfs, proxy, bucket, connect_timeout_s=1, read_timeout_s=1.5)
    cat_path = tmp_path / "catalog.sqlite3"
    st = Stack(broker, tmp_path, sec, {"path": str(cat_path)})
    st.ing.start()
    st.enc.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        watcher = broker.client(st.op, client_id=st.op)
        col = Collector(watcher)
        col.subscribe(f"cam/{d}/video")
        col.subscribe(f"svc/{st.ing_account}/status")
        # The store goes away the moment the encoder uploads its first video object.
        proxy.fail_on("PUT", f"videos/{d}/", mode)
        acked = publish_frames(broker, d, 6)
        assert proxy.failing.wait(90), st.enc.log_path.read_text()[-3000:]
        st.enc.wait_event(lambda e: e.get("event") == "store_or_catalog_retry"
                          and e.get("step") == "upload", 30)
        # While it is away the ingestor seals and fails to upload the next batch.
        acked += publish_frames(broker, d, 6, start_seq=6)
        st.ing.wait_event(lambda e: e.get("event") == "batch_finish_failed"
                          and e.get("step") == "upload", 60)
        m = scrape(st.ing)
        assert m[("camstack_ingestor_uploads_failed_total", ())] >= 1
        assert m[("camstack_ingestor_upload_backlog", ())] >= 1

        def statuses() -> list[dict[str, Any]]:
            return [json.loads(x.payload) for x in list(col.messages)
                    if x.topic.startswith("svc/")]
        wait_until(lambda: any(s.get("state") == "degraded" and "upload" in s.get("reason", "")
                               for s in statuses()), 30, "degraded status with a reason")
        assert batch_folders(st.ing_root), "the failed batch stays on the local disk"
        before = m[("camstack_ingestor_uploads_failed_total", ())]
        wait_until(lambda: scrape(st.ing)[("camstack_ingestor_uploads_failed_total", ())]
                   > before, 30, "uploads_failed_total rising while the store fails")
        assert not any(x.topic.startswith("cam/") for x in list(col.messages)), \
            "no video while the store is away"
        proxy.recover()

        def videos() -> set[str]:
            return {json.loads(x.payload)["batch"] for x in list(col.messages)
                    if x.topic.startswith("cam/")}
        wait_until(lambda: len(videos()) >= 2, 120, "both videos after the store returned")
        wait_until(lambda: statuses()[-1].get("state") == "online", 30, "online again")
        store = S3Store(seaweedfs.s3_settings(bucket=bucket))
        cat = open_catalog(CatalogSettings(path=cat_path))
        try:
            wait_until(lambda: all(b.state is BatchState.PURGED
                                   for b in cat.list_batches(device=d)), 30, "purged")
            _audit_store(store, cat, d, len(acked), 2,
                         (tmp_path / "pki" / "video-signing.pub").read_bytes())
        finally:
            cat.close()
            store.close()
        _quiet(st)
        assert scrape(st.enc)[("camstack_encoder_failures_total", (("step", "upload"),))] >= 1
        watcher.disconnect()
        watcher.loop_stop()
        assert st.enc.stop() == 0
        assert st.ing.stop() == 0
    finally:
        st.stop()
        proxy.close()


# -- 3. Retention on the object store --------------------------------------------------


def _encode_at(store: S3Store, cat: SqlCatalog, tmp: Path, device: str, batch: str,
               t0: int) -> VideoRow:
    """A real video of a 4-frame batch captured from ``t0``, made by encode_from_store."""
    import zlib  # noqa: PLC0415

    from objstore.pack import pack_bytes  # noqa: PLC0415

    frames = [(f"frames/{t0 + i * 500:013d}_0000cafe_{i:010d}.jpg", make_jpeg(160, 120, i))
              for i in range(4)]
    man = {"v": 1, "device": device, "batch": batch, "sealed_ms": t0 + 10_000,
           "frames": [{"file": n, "ts_ms": t0 + i * 500, "bytes": len(b), "crc32": zlib.crc32(b),
                       "boot_id": 0xCAFE, "frame_seq": i, "capture_ms": t0 + i * 500,
                       "clock_synced": True} for i, (n, b) in enumerate(frames)],
           "first_capture_ms": t0, "last_capture_ms": t0 + 1500}
    data, idx = pack_bytes(json.dumps(man).encode(), frames)
    cat.record_sealed(SealedBatch(device=device, batch=batch, frames=4, first_capture_ms=t0,
                                  last_capture_ms=t0 + 1500))
    store.put_bytes(pack_key(device, batch), data)
    cat.mark_uploaded(device, batch, pack_key=pack_key(device, batch), pack_sha256=idx.sha256,
                      pack_bytes=idx.size)
    assert encode_from_store(BatchRef(device, batch), _job(store, cat, tmp)).outcome == "encoded"
    row = cat.get_video(device, batch)
    assert row is not None
    return row


def _objects(store: S3Store, row: VideoRow) -> list[str]:
    stem = row.location.removesuffix(".mp4")
    return [k for k in (row.location, f"{stem}.jpg", f"{stem}.json") if store.exists(k)]


def test_store_retention_deletes_old_videos_by_the_catalog(
        s3_store: S3Store, catalog: SqlCatalog, tmp_path: Path) -> None:
    d = f"cam{uid()}"
    old1 = _encode_at(s3_store, catalog, tmp_path, d, f"{d}-20261124T101500Z-0001", T0)
    old2 = _encode_at(s3_store, catalog, tmp_path, d, f"{d}-20261124T101500Z-0002",
                      T0 + 60_000)
    new = _encode_at(s3_store, catalog, tmp_path, d, f"{d}-20261129T101500Z-0003",
                     T0 + 5 * DAY_MS)
    assert all(len(_objects(s3_store, r)) == 3 for r in (old1, old2, new))
    # An object no row names: retention works from the catalog, it never lists the bucket.
    stray = f"videos/{d}/2026-11-20/stray.mp4"
    s3_store.put_bytes(stray, b"not ours")
    metrics = EncoderMetrics()
    rules = RetentionSettings(max_age_days=3)
    now = (T0 + 4 * DAY_MS) / 1000
    gone = retention.sweep_store(s3_store, catalog, rules, metrics, now=now)
    assert sorted(r.batch for r in gone) == sorted([old1.batch, old2.batch])
    for r in (old1, old2):
        assert _objects(s3_store, r) == []
        row = catalog.get_video(d, r.batch)
        assert row is not None and row.deleted_ms is not None
    assert len(_objects(s3_store, new)) == 3 and s3_store.exists(stray)
    assert [v.batch for v in catalog.list_videos(device=d)] == [new.batch]
    reg = metrics.registry
    assert reg.get_sample_value("camstack_encoder_retention_deleted_total",
                                {"rule": "max_age"}) == 2
    assert reg.get_sample_value("camstack_encoder_retention_freed_bytes_total") == \
        old1.bytes + old2.bytes
    # Idempotent: a second sweep finds nothing and counts nothing.
    assert retention.sweep_store(s3_store, catalog, rules, metrics, now=now) == []
    assert reg.get_sample_value("camstack_encoder_retention_deleted_total",
                                {"rule": "max_age"}) == 2
    # A sweep that died after deleting the MP4, before marking the row: the next one
    # deletes what is left (missing keys are fine) and marks the row.
    s3_store.delete(new.location)
    later = (T0 + 9 * DAY_MS) / 1000
    assert [r.batch for r in retention.sweep_store(s3_store, catalog, rules, metrics,
                                                   now=later)] == [new.batch]
    assert _objects(s3_store, new) == [] and s3_store.exists(stray)
    assert catalog.videos_to_expire(int(later * 1000) + DAY_MS) == []
    # No rule, nothing to do.
    assert retention.sweep_store(s3_store, catalog, RetentionSettings(), metrics) == []


def test_encoder_service_runs_store_retention(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, postgres: PostgresHandle,
        tmp_path: Path) -> None:
    bucket = "ret-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    dbname = "ret_" + secrets.token_hex(4)
    postgres.create_database(dbname)
    st = Stack(broker, tmp_path, store_section(seaweedfs, bucket),
               {"backend": "postgres", "dsn": postgres.dsn(dbname)},
               enc_sections={"retention": {"max_age_days": 5, "interval_s": 0.5}})
    st.ing.start()
    st.enc.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        # Captured 10 days ago: due as soon as it is a video.
        publish_frames(broker, d, 6, t0=(int(time.time()) // 60 * 60 - 10 * 86_400) * 1000)
        ev = st.enc.wait_event(lambda e: e.get("event") == "video_deleted"
                               and e.get("device") == d, 90)
        assert ev["rule"] == "max_age" and ev["backend"] == "s3"
        store = S3Store(seaweedfs.s3_settings(bucket=bucket))
        cat = open_catalog(postgres.catalog_settings(dbname))
        try:
            row = cat.get_video(d, ev["batch"])
            assert row is not None and row.deleted_ms is not None
            assert _objects(store, row) == []
            wait_until(lambda: not [o for o in store.list("") if d in o.key], 30,
                       "no object of the device left")
        finally:
            cat.close()
            store.close()
        m = scrape(st.enc)
        assert m[("camstack_encoder_retention_deleted_total", (("rule", "max_age"),))] == 1
        assert st.enc.stop() == 0
    finally:
        st.stop()


# -- 4. A crash between the MP4 upload and the video row -------------------------------


def test_encoder_killed_between_mp4_upload_and_row_converges(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    bucket = "crash-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    proxy = S3Proxy("127.0.0.1", seaweedfs.ports["s3"], bucket)
    cat_path = tmp_path / "catalog.sqlite3"
    st = Stack(broker, tmp_path, store_section(seaweedfs, bucket), {"path": str(cat_path)},
               enc_store=_proxied(seaweedfs, proxy, bucket))
    st.ing.start()
    st.enc.start()
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    cat = open_catalog(CatalogSettings(path=cat_path))
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        # The store's answer to the MP4's PUT is held: the object is stored, the encoder
        # does not know it yet and has written no row. SIGKILL it there.
        proxy.hold("PUT", f"videos/{d}/", suffix=".mp4")
        acked = publish_frames(broker, d, 6)
        assert proxy.holding.wait(90), st.enc.log_path.read_text()[-3000:]
        st.enc.kill()
        mp4s = [o.key for o in store.list(f"videos/{d}/") if o.key.endswith(".mp4")]
        assert len(mp4s) == 1, mp4s
        batch = cat.list_batches(device=d)[0].batch
        assert cat.get_video(d, batch) is None, "no row yet: the MP4 is an orphan now"
        orphan = store.head(mp4s[0])
        assert orphan is not None
        # A later run of the same batch (restart: redelivered ready event and scan).
        st.enc.start()
        wait_until(lambda: (b := cat.get_batch(d, batch)) is not None
                   and b.state is BatchState.PURGED, 90, "batch purged after the restart")
        vids = _audit_store(store, cat, d, len(acked), 1,
                            (tmp_path / "pki" / "video-signing.pub").read_bytes())
        assert vids[0].location == mp4s[0], "the same key, overwritten"
        _quiet(st)
        assert st.enc.stop() == 0
        assert st.ing.stop() == 0
    finally:
        cat.close()
        store.close()
        st.stop()
        proxy.close()
