"""The encode function wired for AWS Lambda: ``CAM_LAMBDA_FACTORY=encoder.lambda_app:make``.

:mod:`jobqueue.lambda_handler` turns SQS records into :class:`jobqueue.EncodeJob` values
and calls the ``(encode, quarantine)`` pair :func:`make` returns, once per execution
environment (a cold start). ``encode`` is the same function every runner calls,
:func:`encoder.cloud.encode_from_store`: the pack from the store, the MP4 and thumbnail
back to it, the signed video row, the pack deleted.

**Never run on real Lambda here** (tests/integration/test_lambda_seaweedfs.py calls the
real handler entry point with AWS's documented event shapes against a real SeaweedFS
and catalog). Differences from the other runners, by design:

* settings come from the environment (``CAM_STORE__BACKEND=s3``, ``CAM_STORE__S3__…``,
  ``CAM_CATALOG__BACKEND=postgres``, ``CAM_CATALOG__DSN_FILE=…``) or ``CAM_CONFIG``;
* the signing key must already exist (``signing_key_file``, e.g. from a secret mounted
  as a file): a key made at each cold start would sign every video with a new key;
* no MQTT: no video event is published; the catalog row is the record (the web page and
  ``camstack videos`` read it);
* scratch files go under ``CAM_LAMBDA_SCRATCH`` (default ``/tmp/camstack``: the only
  writable place on Lambda; size the function's ephemeral storage for one pack plus
  its MP4).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from catalog import open_catalog
from catalog.signing import load_or_create_key
from config.loader import load_settings
from config.settings import EncoderSettings
from encoder.cloud import BatchRef, CloudJob, encode_from_store, quarantine_batch
from encoder.jetstream import job_outcome
from encoder.jobs import Outcome as BatchOutcome
from encoder.metrics import EncoderMetrics
from encoder.muxer import EncodeOptions
from jobqueue.job import EncodeFn, EncodeJob, Outcome, QuarantineFn
from objstore import open_store

log = structlog.get_logger("encoder.lambda")


def make() -> tuple[EncodeFn, QuarantineFn]:
    """Build the store, the catalog and the encode function from the environment.

    Raises:
        RuntimeError: Naming the setting when the wiring cannot work (no S3 store, no
            signing key).
    """
    settings = load_settings(EncoderSettings, os.environ.get("CAM_CONFIG") or None)
    if settings.store.backend != "s3":
        raise RuntimeError('store.backend must be "s3" on Lambda (CAM_STORE__BACKEND=s3)')
    if not settings.signing_key_file.is_file():
        raise RuntimeError(f"signing_key_file {settings.signing_key_file} does not exist "
                           "(mount the key the other encoders use)")
    catalog = open_catalog(settings.catalog)
    store = open_store(settings.store)
    scratch = Path(os.environ.get("CAM_LAMBDA_SCRATCH", "/tmp/camstack"))
    cloud = CloudJob(
        store=store, catalog=catalog, scratch=scratch / str(os.getpid()),
        options=EncodeOptions.from_settings(settings.encode),
        signing_key=load_or_create_key(settings.signing_key_file),
        pack_prefix=settings.store.pack_prefix, max_attempts=settings.work.max_attempts,
        account="lambda", metrics=EncoderMetrics(),
        retry_max_s=max(0.5, settings.work.retry_backoff_s * 6))

    def encode(job: EncodeJob) -> Outcome:
        res = encode_from_store(BatchRef(job.device, job.batch), cloud)
        log.info("job_handled", device=job.device, batch=job.batch, outcome=res.outcome,
                 detail=res.detail)
        return job_outcome(BatchOutcome(res.outcome))

    def quarantine(job: EncodeJob, receives: int) -> None:
        quarantine_batch(BatchRef(job.device, job.batch), cloud, "received_too_often",
                         receives=receives)

    return encode, quarantine
