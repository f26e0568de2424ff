"""The Lambda handler against a real SeaweedFS and the catalog (SQLite, PostgreSQL).

**Real AWS Lambda and SQS never ran here.** The handler is called directly with an
SQS event whose body is an S3 event notification shaped after AWS's documentation
(tests/unit/test_lambda_handler.py builds it), pointing at a real pack uploaded to a
real SeaweedFS with objstore/pack.py. The first test injects an encode function that
only reads and checks the pack; the last one goes through the real entry point,
``jobqueue.lambda_handler.handler`` with ``CAM_LAMBDA_FACTORY=encoder.lambda_app:make``,
configured from the environment as on Lambda, and makes real videos.
"""

from __future__ import annotations

import io
import json
import secrets
import zlib
from pathlib import Path

import pytest

from camstack.servers import SeaweedHandle
from catalog import BatchState, SealedBatch, SqlCatalog
from jobqueue.job import EncodeJob, Outcome
from jobqueue.lambda_handler import LambdaStats, handle_sqs_event
from objstore import NotFoundError, S3Store
from objstore.pack import PackError, PackReader, pack_bytes
from tests.unit.test_lambda_handler import s3_body, sqs_record

pytestmark = [pytest.mark.integration, pytest.mark.servers]


def make_pack(device: str, batch: str, n: int = 12) -> bytes:
    frames = [(f"frames/{1795515300000 + i * 1000:013d}_deadbeef_{i:010d}.jpg",
               bytes([i]) * (3000 + i)) for i in range(n)]
    manifest = json.dumps({
        "v": 1, "device": device, "batch": batch, "sealed_ms": 1795515600123,
        "frames": [{"file": name, "bytes": len(b), "crc32": zlib.crc32(b)}
                   for name, b in frames]}).encode()
    data, _index = pack_bytes(manifest, frames)
    return data


class PackCheckingEncoder:
    """Reads the pack from the store and verifies every frame; stands in for the encoder."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.frames: dict[str, int] = {}

    def __call__(self, job: EncodeJob) -> Outcome:
        try:
            with self.store.open(job.pack_key) as stream:
                reader = PackReader(stream)
                man = reader.manifest
                if (man.get("device"), man.get("batch")) != (job.device, job.batch):
                    return Outcome.POISON
                self.frames[job.msg_id] = sum(1 for _ in reader.frames())
        except NotFoundError:
            return Outcome.RETRY  # not there (yet): let SQS deliver it again
        except PackError:
            return Outcome.POISON
        return Outcome.OK


def test_s3_event_for_a_real_pack_in_seaweedfs(s3_store: S3Store, catalog: SqlCatalog) -> None:
    good, corrupt, missing = (f"cam01-20261124T101500Z-000{n}" for n in (1, 2, 3))
    for batch in (good, corrupt):
        catalog.record_sealed(SealedBatch(device="cam01", batch=batch, frames=12,
                                          first_capture_ms=1795515300000,
                                          last_capture_ms=1795515311000))
    s3_store.put_bytes(f"packs/cam01/{good}.tar", make_pack("cam01", good))
    damaged = bytearray(make_pack("cam01", corrupt))
    damaged[-20 * 512] ^= 0xFF  # inside the last frames
    s3_store.put_bytes(f"packs/cam01/{corrupt}.tar", bytes(damaged))

    def quarantine(job: EncodeJob, receives: int) -> None:
        catalog.quarantine(job.device, job.batch, f"corrupt pack after {receives} receives")

    enc = PackCheckingEncoder(s3_store)
    stats = LambdaStats()
    event = {"Records": [sqs_record(s3_body(f"packs/cam01/{b}.tar"), message_id=b)
                         for b in (good, corrupt, missing)]}
    resp = handle_sqs_event(event, enc, quarantine=quarantine, stats=stats)
    assert resp == {"batchItemFailures": [{"itemIdentifier": missing}]}
    assert enc.frames == {f"cam01/{good}": 12}
    row = catalog.get_batch("cam01", corrupt)
    assert row is not None and row.state == BatchState.QUARANTINED
    assert (stats.jobs_ok, stats.quarantined, stats.failures) == (1, 1, 1)

    # At least once: the same notification again is handled again, harmlessly.
    again = handle_sqs_event({"Records": [sqs_record(s3_body(f"packs/cam01/{good}.tar"))]},
                             enc)
    assert again == {"batchItemFailures": []}


def test_handler_entry_point_with_the_encoder_factory_makes_a_video(
        s3_store: S3Store, seaweedfs: SeaweedHandle, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the container image runs: settings from the environment only, a cold start
    building the wiring once, S3 notifications for real packs in; a signed video row,
    an MP4 in the store and the pack gone out. A redelivered notification is harmless;
    a record received too often is quarantined; no signing key is a clear error."""
    from catalog import open_catalog  # noqa: PLC0415
    from catalog.signing import load_or_create_key  # noqa: PLC0415
    from config.settings import CatalogSettings  # noqa: PLC0415
    from encoder.muxer import probe_video  # noqa: PLC0415
    from jobqueue import lambda_handler  # noqa: PLC0415
    from tests.integration.test_cloud import stage_uploaded  # noqa: PLC0415

    device = "cam" + secrets.token_hex(3)
    batch, poison = f"{device}-20261124T101500Z-0001", f"{device}-20261124T101500Z-0002"
    db = tmp_path / "catalog.sqlite3"
    catalog = open_catalog(CatalogSettings(path=db))
    for b in (batch, poison):
        stage_uploaded(s3_store, catalog, device, b, n=5)
    s3 = seaweedfs.s3_settings(bucket=s3_store.bucket)
    key = tmp_path / "video-signing.key"
    env = {"CAM_LAMBDA_FACTORY": "encoder.lambda_app:make",
           "CAM_LAMBDA_SCRATCH": str(tmp_path / "lambda-tmp"),
           "CAM_STORE__BACKEND": "s3", "CAM_STORE__S3__BUCKET": s3.bucket,
           "CAM_STORE__S3__ENDPOINT_URL": str(s3.endpoint_url),
           "CAM_STORE__S3__ACCESS_KEY_ID": str(s3.access_key_id),
           "CAM_STORE__S3__SECRET_ACCESS_KEY": s3.secret_access_key.get_secret_value(),
           "CAM_CATALOG__BACKEND": "sqlite", "CAM_CATALOG__PATH": str(db),
           "CAM_SIGNING_KEY_FILE": str(key), "CAM_ENCODE__PRESET": "ultrafast"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CAM_CONFIG", raising=False)
    monkeypatch.setattr(lambda_handler, "_wiring", None)
    event = {"Records": [sqs_record(s3_body(f"packs/{device}/{batch}.tar"), message_id="m1")]}
    with pytest.raises(RuntimeError, match="signing_key_file"):
        lambda_handler.handler(event, None)
    load_or_create_key(key)
    try:
        assert lambda_handler.handler(event, None) == {"batchItemFailures": []}
        row = catalog.get_video(device, batch)
        assert row is not None and row.frames == 5
        assert probe_video(io.BytesIO(s3_store.get_bytes(row.location))).frames == 5
        assert not s3_store.exists(f"packs/{device}/{batch}.tar")
        assert catalog.get_batch(device, batch).state is BatchState.PURGED  # type: ignore[union-attr]
        # At least once: the same notification again changes nothing.
        assert lambda_handler.handler(event, None) == {"batchItemFailures": []}
        assert len(catalog.list_videos(device=device)) == 1
        # Received more often than CAM_LAMBDA_MAX_RECEIVES (5): quarantined, not run.
        again = {"Records": [sqs_record(s3_body(f"packs/{device}/{poison}.tar"),
                                        message_id="m2", receives=6)]}
        assert lambda_handler.handler(again, None) == {"batchItemFailures": []}
        q = catalog.get_batch(device, poison)
        assert q is not None and q.state is BatchState.QUARANTINED
        assert "received_too_often" in (q.error or "")
        assert catalog.get_video(device, poison) is None
    finally:
        catalog.close()
