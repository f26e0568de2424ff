"""The Lambda handler against a real SeaweedFS and the catalog (SQLite, PostgreSQL).

**Real AWS Lambda and SQS never ran here.** The handler is called directly with an
SQS event whose body is an S3 event notification shaped after AWS's documentation
(tests/unit/test_lambda_handler.py builds it), pointing at a real pack uploaded to a
real SeaweedFS with objstore/pack.py. The encode function injected here only reads
and checks the pack (the real one, in encoder/, makes the video); it records a corrupt
pack as quarantined in the real catalog.
"""

from __future__ import annotations

import json
import zlib

import pytest

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
