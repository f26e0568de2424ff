"""The services on the S3 backend and PostgreSQL: real SeaweedFS, real PostgreSQL, no mocks.

Each test waits for positive signals (log events, MQTT messages, catalog rows), never
for a fixed time.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg
from camstack.mqttwait import Collector
from camstack.procs import REPO, ServiceProcess, scrape, service_config
from camstack.servers import PostgresHandle, SeaweedHandle, start_postgres
from catalog import BatchState, SealedBatch, SqlCatalog, open_catalog
from catalog.signing import load_or_create_key, load_public_key, public_key_pem, verify_video
from config.settings import CatalogSettings
from contract.codec import split_frame
from contract.layout import pack_key
from encoder.cloud import BatchRef, CloudJob, encode_from_store
from encoder.muxer import EncodeOptions, probe_video
from objstore import S3Store
from objstore.pack import pack_bytes, read_pack

pytestmark = pytest.mark.integration

T0 = 1795515300000


def uid() -> str:
    return uuid.uuid4().hex[:6]


def store_section(h: SeaweedHandle, bucket: str) -> dict[str, Any]:
    s = h.s3_settings(bucket=bucket, connect_timeout_s=1, read_timeout_s=5, max_attempts=1)
    d = s.model_dump(mode="json", exclude_none=True)
    d["secret_access_key"] = s.secret_access_key.get_secret_value()
    return {"backend": "s3", "s3": d}


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Stack:
    """An ingestor (root A) and optionally an encoder (root B, its own) on S3 + a catalog."""

    def __init__(self, broker: BrokerHandle, tmp: Path, store: dict[str, Any],
                 catalog: dict[str, Any], *, frames_per_video: int = 6,
                 enc_store: dict[str, Any] | None = None,
                 enc_sections: dict[str, dict[str, Any]] | None = None) -> None:
        self.broker = broker
        self.tmp = tmp
        self.ing_root = tmp / "ingestor-disk"
        self.enc_root = tmp / "encoder-disk"
        self.ing_account = f"ingestor-{uid()}"
        self.enc_account = f"encoder-{uid()}"
        self.op = f"operator-{uid()}"
        for a in (self.ing_account, self.enc_account, self.op):
            broker.add_service(a)
        self.ing = ServiceProcess("ingestor", service_config(
            broker, self.ing_account, self.ing_root, tmp / "ing.toml",
            ingest={"frames_per_video": frames_per_video, "upload_retry_s": 0.2,
                    "upload_retry_max_s": 1.0, "status_interval_s": 1.0},
            mqtt={"session_expiry_s": 300}, store=store, catalog=catalog), tmp / "ing.log")
        sections: dict[str, Any] = {
            "encode": {"preset": "ultrafast"}, "mqtt": {"session_expiry_s": 300},
            "work": {"retry_backoff_s": 0.5}, "store": enc_store or store, "catalog": catalog}
        for name, values in (enc_sections or {}).items():
            sections[name] = {**sections.get(name, {}), **values}
        enc_cfg = service_config(broker, self.enc_account, self.enc_root, tmp / "enc.toml",
                                 **sections)
        enc_cfg.write_text(f'share_group = "enc-{uid()}"\n' + enc_cfg.read_text())
        self.enc = ServiceProcess("encoder", enc_cfg, tmp / "enc.log")

    def stop(self) -> None:
        self.enc.stop()
        self.ing.stop()


_PASSWORDS: dict[str, str] = {}


def publish_frames(broker: BrokerHandle, device: str, n: int, start_seq: int = 0,
                   t0: int = T0) -> list[tuple[int, int]]:
    """Publish ``n`` frames QoS 1 (captured from ``t0``, one every 500 ms) and wait for
    every PUBACK; returns the acknowledged keys."""
    if device not in _PASSWORDS:
        _PASSWORDS[device] = broker.add_device(device)
    dev = broker.client(device, _PASSWORDS[device], client_id=device)
    infos = []
    keys = []
    for seq in range(start_seq, start_seq + n):
        for chunk in split_frame(make_jpeg(320, 240, seq), boot_id=0xCAFE, frame_seq=seq,
                                 capture_ms=t0 + seq * 500, clock_synced=True, chunk_data=4000):
            infos.append(dev.publish(f"cam/{device}/frame", chunk, qos=1))
        keys.append((0xCAFE, seq))
    for i in infos:
        i.wait_for_publish(30)
        assert i.is_published()
    dev.disconnect()
    dev.loop_stop()
    return keys


def batch_folders(root: Path) -> list[Path]:
    b = root / "batches"
    return [p for p in b.glob("*/*") if p.is_dir()] if b.is_dir() else []


def test_s3_postgres_end_to_end_worker_without_the_ingestor_disk(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, postgres: PostgresHandle,
        tmp_path: Path) -> None:
    bucket = "e2e-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    dbname = "e2e_" + secrets.token_hex(4)
    postgres.create_database(dbname)
    st = Stack(broker, tmp_path, store_section(seaweedfs, bucket),
               {"backend": "postgres", "dsn": postgres.dsn(dbname)})
    # The encoder's config names only its own folder: it cannot read the ingestor's.
    assert str(st.ing_root) not in st.enc.config.read_text()
    st.ing.start()
    st.enc.start()
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    cat = open_catalog(postgres.catalog_settings(dbname))
    try:
        st.ing.wait_event("ingestor_ready", 30)
        st.enc.wait_event("encoder_ready", 30)
        d = f"cam{uid()}"
        watcher = broker.client(st.op, client_id=st.op)
        col = Collector(watcher)
        col.subscribe(f"cam/{d}/video")
        publish_frames(broker, d, 12)
        assert col.wait_for(lambda ms: len(ms) >= 2, 90), st.enc.log_path.read_text()[-3000:]
        events = sorted((json.loads(m.payload) for m in col.messages), key=lambda e: e["batch"])
        pub = load_public_key((tmp_path / "pki" / "video-signing.pub").read_bytes())
        for e in events:
            assert e["location"].startswith(f"videos/{d}/") and e["frames"] == 6
            mp4 = store.get_bytes(e["location"])
            assert probe_video(io.BytesIO(mp4)).frames == 6
            assert store.exists(e["location"].removesuffix(".mp4") + ".jpg")
            row = cat.get_video(d, e["batch"])
            assert row is not None and row.location == e["location"]
            assert verify_video(mp4, row, pub).ok
            b = cat.get_batch(d, e["batch"])
            assert b is not None and b.state is BatchState.PURGED
            assert b.pack_key == pack_key(d, e["batch"]) and b.pack_sha256 == row.pack_sha256
        assert len(cat.list_videos(device=d)) == 2
        # Packs deleted, local batches released, nothing of the ingestor's disk used.
        wait_until(lambda: not list(store.list(f"packs/{d}/")), 30, "packs deleted")
        assert batch_folders(st.ing_root) == []
        assert not (st.enc_root / "batches").exists() or not batch_folders(st.enc_root)
        assert st.enc.stop() == 0
        assert st.ing.stop() == 0
        watcher.disconnect()
        watcher.loop_stop()
    finally:
        st.stop()
        cat.close()
        store.close()


def test_seaweedfs_killed_during_uploads_loses_no_acknowledged_frame(
        broker: BrokerHandle, fresh_seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    h = fresh_seaweedfs
    st = Stack(broker, tmp_path, store_section(h, h.bucket),
               {"path": str(tmp_path / "catalog.sqlite3")}, frames_per_video=5)
    st.ing.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        d = f"cam{uid()}"
        watcher = broker.client(st.op, client_id=st.op)
        col = Collector(watcher)
        col.subscribe(f"svc/{st.ing_account}/status")
        acked = publish_frames(broker, d, 5)
        st.ing.wait_event("batch_uploaded", 60)
        h.stop(kill=True)  # SIGKILL the store, then keep sending
        acked += publish_frames(broker, d, 15, start_seq=5)
        st.ing.wait_event(lambda e: e.get("event") == "batch_finish_failed"
                          and e.get("step") == "upload", 60)
        m = scrape(st.ing)
        assert m[("camstack_ingestor_uploads_failed_total", ())] >= 1
        assert m[("camstack_ingestor_upload_backlog", ())] >= 1

        def degraded() -> bool:
            return any(json.loads(x.payload).get("state") == "degraded"
                       and "upload" in json.loads(x.payload).get("reason", "")
                       for x in col.messages if x.topic.startswith("svc/"))
        wait_until(degraded, 30, "degraded status with a reason")
        # Frames are kept on the local disk while the store is down.
        assert batch_folders(st.ing_root), "sealed batches must stay local"
        h.start()
        wait_until(lambda: sum(1 for e in st.ing.events() if e.get("event") == "batch_uploaded")
                   >= 4, 90, "every batch uploaded after the store returned")
        wait_until(lambda: batch_folders(st.ing_root) == [], 30, "local batches released")
        wait_until(lambda: any(json.loads(x.payload).get("state") == "online"
                               for x in col.messages[-3:] if x.topic.startswith("svc/")),
                   30, "online again")
        # Audit: every acknowledged frame is in exactly one pack, byte-identical.
        store = S3Store(h.s3_settings())
        seen: list[tuple[int, int]] = []
        for info in store.list(f"packs/{d}/"):
            _man, frames = read_pack(io.BytesIO(store.get_bytes(info.key, sha256=info.sha256)))
            for f in frames:
                seen.append((f.entry["boot_id"], f.entry["frame_seq"]))
                assert f.data == make_jpeg(320, 240, f.entry["frame_seq"])
        store.close()
        assert sorted(seen) == sorted(acked), "lost or duplicated frames"
        cat = open_catalog(CatalogSettings(path=tmp_path / "catalog.sqlite3"))
        rows = cat.list_batches(device=d)
        cat.close()
        assert len(rows) == 4 and all(r.state is BatchState.UPLOADED for r in rows)
        # Each ready event went out after its upload.
        wait_until(lambda: len({e["batch"] for e in st.ing.events()
                                if e.get("event") == "batch_announced"}) == 4, 30, "4 announced")
        watcher.disconnect()
        watcher.loop_stop()
        assert st.ing.stop() == 0
    finally:
        st.stop()


def test_upload_child_killed_is_replaced_each_frame_in_one_pack(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    bucket = "upkill-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    st = Stack(broker, tmp_path, store_section(seaweedfs, bucket),
               {"path": str(tmp_path / "catalog.sqlite3")}, frames_per_video=5)
    st.ing.start()
    try:
        st.ing.wait_event("ingestor_ready", 30)
        d = f"cam{uid()}"
        acked = publish_frames(broker, d, 5)
        st.ing.wait_event("batch_uploaded", 60)
        assert st.ing.proc is not None
        children = [c for c in psutil.Process(st.ing.proc.pid).children()
                    if "ingestor.uploadproc" in " ".join(c.cmdline())]
        assert len(children) == 1, "one upload child"
        children[0].send_signal(signal.SIGKILL)
        # A zombie until the ingestor notices (at the next upload) and reaps it.
        wait_until(lambda: not children[0].is_running()
                   or children[0].status() == psutil.STATUS_ZOMBIE, 10, "child dead")
        acked += publish_frames(broker, d, 15, start_seq=5)
        wait_until(lambda: sum(1 for e in st.ing.events() if e.get("event") == "batch_uploaded")
                   >= 4, 90, "every batch uploaded by a new child")
        wait_until(lambda: batch_folders(st.ing_root) == [], 30, "local batches released")
        m = scrape(st.ing)
        assert m[("camstack_ingestor_upload_process_restarts_total", ())] == 1
        assert m[("camstack_ingestor_uploads_failed_total", ())] >= 1
        assert any(e.get("event") == "upload_process_lost" for e in st.ing.events())
        store = S3Store(seaweedfs.s3_settings(bucket=bucket))
        seen: list[tuple[int, int]] = []
        for info in store.list(f"packs/{d}/"):
            _man, frames = read_pack(io.BytesIO(store.get_bytes(info.key, sha256=info.sha256)))
            seen += [(f.entry["boot_id"], f.entry["frame_seq"]) for f in frames]
        store.close()
        assert sorted(seen) == sorted(acked), "lost or duplicated frames"
        assert st.ing.stop() == 0
        assert not any("ingestor.uploadproc" in " ".join(c.cmdline())
                       for c in psutil.Process().children(recursive=True)
                       if c.is_running() and c.status() != psutil.STATUS_ZOMBIE)
    finally:
        st.stop()


def test_postgres_stopped_mid_batch_nothing_lost_no_duplicate(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    pg = start_postgres()
    try:
        dbname = "pgstop_" + secrets.token_hex(3)
        pg.create_database(dbname)
        bucket = "pgstop-" + secrets.token_hex(4)
        seaweedfs.create_bucket(bucket)
        st = Stack(broker, tmp_path, store_section(seaweedfs, bucket),
                   {"backend": "postgres", "dsn": pg.dsn(dbname), "connect_timeout_s": 1})
        st.ing.start()
        st.enc.start()
        try:
            st.ing.wait_event("ingestor_ready", 30)
            st.enc.wait_event("encoder_ready", 30)
            d = f"cam{uid()}"
            watcher = broker.client(st.op, client_id=st.op)
            col = Collector(watcher)
            col.subscribe(f"cam/{d}/video")
            publish_frames(broker, d, 3)
            pg.stop("immediate")  # mid-batch: 3 of 6 frames stored
            publish_frames(broker, d, 9, start_seq=3)
            st.ing.wait_event(lambda e: e.get("event") == "batch_finish_failed"
                              and e.get("step") == "catalog", 60)
            assert batch_folders(st.ing_root), "kept locally while the database is down"
            pg.start()
            assert col.wait_for(lambda ms: len({json.loads(m.payload)["batch"] for m in ms})
                                >= 2, 120), st.enc.log_path.read_text()[-3000:]
            cat = open_catalog(pg.catalog_settings(dbname))
            try:
                vids = cat.list_videos(device=d)
                assert len(vids) == 2 and len({v.location for v in vids}) == 2
                assert sum(v.frames for v in vids) == 12
                wait_until(lambda: all(b.state is BatchState.PURGED
                                       for b in cat.list_batches(device=d)), 30, "purged")
            finally:
                cat.close()
            watcher.disconnect()
            watcher.loop_stop()
        finally:
            st.stop()
    finally:
        pg.close()


def _start_fails(tmp: Path, broker: BrokerHandle, module: str, **sections: Any) -> str:
    cfg = service_config(broker, f"{module}-{uid()}", tmp / "root", tmp / f"{uid()}.toml",
                         **sections)
    res = subprocess.run([sys.executable, "-m", module], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "CAM_CONFIG": str(cfg)})
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    return res.stderr


@pytest.mark.parametrize("module", ["ingestor", "encoder"])
def test_bad_store_or_database_at_start_names_the_setting(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, tmp_path: Path, module: str) -> None:
    good = store_section(seaweedfs, seaweedfs.bucket)
    wrong_key = {"backend": "s3", "s3": {**good["s3"], "secret_access_key": "wrong-secret"}}
    err = _start_fails(tmp_path, broker, module, store=wrong_key)
    assert "store.s3." in err and "wrong-secret" not in err
    no_bucket = {"backend": "s3", "s3": {**good["s3"], "bucket": "no-such-bucket-" + uid()}}
    assert "store.s3.bucket" in _start_fails(tmp_path, broker, module, store=no_bucket)
    unreachable = {"backend": "postgres", "connect_timeout_s": 1,
                   "dsn": "host=127.0.0.1 port=1 dbname=x user=x password=hunter2"}
    err = _start_fails(tmp_path, broker, module, catalog=unreachable)
    assert "catalog.dsn" in err and "hunter2" not in err


# -- the encode path called directly (what other runners will call) --------------------


def _sealed_pack(device: str, batch: str, n: int = 4) -> tuple[bytes, str, int]:
    frames = [(f"frames/{T0 + i * 500:013d}_0000cafe_{i:010d}.jpg", make_jpeg(160, 120, i))
              for i in range(n)]
    import zlib  # noqa: PLC0415

    man = {"v": 1, "device": device, "batch": batch, "sealed_ms": T0 + 10_000,
           "frames": [{"file": name, "ts_ms": T0 + i * 500, "bytes": len(data),
                       "crc32": zlib.crc32(data), "boot_id": 0xCAFE, "frame_seq": i,
                       "capture_ms": T0 + i * 500, "clock_synced": True}
                      for i, (name, data) in enumerate(frames)],
           "first_capture_ms": T0, "last_capture_ms": T0 + (n - 1) * 500}
    data, idx = pack_bytes(json.dumps(man).encode(), frames)
    return data, idx.sha256, idx.size


def stage_uploaded(store: S3Store, cat: SqlCatalog, device: str, batch: str, *, n: int = 4,
                   recorded_sha: str | None = None) -> None:
    """A batch as the ingestor leaves it: pack in the store, catalog row ``uploaded``.

    ``recorded_sha``: the digest the row names instead of the pack's own (a pack altered
    after its upload).
    """
    data, sha, size = _sealed_pack(device, batch, n)
    cat.record_sealed(SealedBatch(device=device, batch=batch, frames=n, first_capture_ms=T0,
                                  last_capture_ms=T0 + (n - 1) * 500))
    store.put_bytes(pack_key(device, batch), data)
    cat.mark_uploaded(device, batch, pack_key=pack_key(device, batch),
                      pack_sha256=recorded_sha or sha, pack_bytes=size)


def _job(store: S3Store, cat: SqlCatalog, tmp: Path) -> CloudJob:
    return CloudJob(store=store, catalog=cat, scratch=tmp / "scratch",
                    options=EncodeOptions(preset="ultrafast"),
                    signing_key=load_or_create_key(tmp / "k.key"), retry_min_s=0.05)


def test_encode_from_store_is_idempotent_and_quarantines_a_bad_pack(
        s3_store: S3Store, catalog: SqlCatalog, tmp_path: Path) -> None:
    d = f"cam{uid()}"
    good, bad = f"{d}-20261124T101500Z-0001", f"{d}-20261124T101500Z-0002"
    job = _job(s3_store, catalog, tmp_path)
    stage_uploaded(s3_store, catalog, d, good)
    # The bad one's row names another digest: the pack was altered after upload.
    stage_uploaded(s3_store, catalog, d, bad, recorded_sha="0" * 64)
    first = encode_from_store(BatchRef(d, good), job)
    assert first.outcome == "encoded" and first.event is not None
    again = encode_from_store(BatchRef(d, good), job)  # a redelivered ready event
    assert again.outcome == "already_done" and again.event == first.event
    assert len(catalog.list_videos(device=d)) == 1
    row = catalog.get_video(d, good)
    assert row is not None
    pub = load_public_key(public_key_pem(job.signing_key))
    assert verify_video(s3_store.get_bytes(row.location), row, pub).ok
    assert not s3_store.exists(pack_key(d, good))
    assert catalog.get_batch(d, good).state is BatchState.PURGED  # type: ignore[union-attr]
    q = encode_from_store(BatchRef(d, bad), job)
    assert q.outcome == "quarantined" and q.detail == "pack_checksum"
    b = catalog.get_batch(d, bad)
    assert b is not None and b.state is BatchState.QUARANTINED
    assert "pack_checksum" in (b.error or "")
    assert s3_store.exists(f"quarantine/{d}/{bad}/pack.tar")
    assert json.loads(s3_store.get_bytes(f"quarantine/{d}/{bad}/reason.json"))["reason"] == \
        "pack_checksum"
    assert not list((tmp_path / "scratch").glob("*/*")), "scratch cleaned"


def test_cli_lists_verifies_migrates_and_applies_lifecycle(
        seaweedfs: SeaweedHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from camstack.cli import main  # noqa: PLC0415
    from config.loader import to_toml  # noqa: PLC0415

    bucket = "cli-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    cfg = tmp_path / "encoder.toml"
    cfg.write_text(to_toml({"signing_key_file": str(tmp_path / "k.key"),
                            "storage": {"root": str(tmp_path / "root")},
                            "catalog": {"path": str(tmp_path / "cat.sqlite3")},
                            "store": store_section(seaweedfs, bucket)}))
    assert main(["catalog", "migrate", "--service-config", str(cfg)]) == 0
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    cat = open_catalog(CatalogSettings(path=tmp_path / "cat.sqlite3"))
    try:
        d = f"cam{uid()}"
        batch = f"{d}-20261124T101500Z-0001"
        data, sha, size = _sealed_pack(d, batch)
        cat.record_sealed(SealedBatch(device=d, batch=batch, frames=4, first_capture_ms=T0,
                                      last_capture_ms=T0 + 1500))
        store.put_bytes(pack_key(d, batch), data)
        cat.mark_uploaded(d, batch, pack_key=pack_key(d, batch), pack_sha256=sha,
                          pack_bytes=size)
        res = encode_from_store(BatchRef(d, batch), _job(store, cat, tmp_path))
        assert res.event is not None
        loc = res.event["location"]
        capsys.readouterr()
        assert main(["videos", "--device", d, "--json", "--since", "2026-11-24",
                     "--service-config", str(cfg)]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [r["location"] for r in rows] == [loc]
        assert main(["batches", "--state", "purged", "--service-config", str(cfg)]) == 0
        assert batch in capsys.readouterr().out
        assert main(["verify", loc, "--service-config", str(cfg)]) == 0
        assert "intact" in capsys.readouterr().out
        store.put_bytes(loc, store.get_bytes(loc) + b"x")  # someone alters the MP4
        assert main(["verify", f"{d}/{batch}", "--service-config", str(cfg)]) == 1
        assert "file altered" in capsys.readouterr().out
        assert main(["store", "lifecycle", "--days", "3", "--service-config", str(cfg)]) == 0
        assert "expire after 3 days" in capsys.readouterr().out
        rules = store.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert any(r["Filter"].get("Prefix") == "packs/" for r in rules)
    finally:
        cat.close()
        store.close()
