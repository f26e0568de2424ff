"""AWS Lambda entry for SQS-delivered encode work, with partial batch failures.

**Never run on real Lambda or SQS here**: it is tested by calling it with event shapes
built after AWS's documentation (tests/unit/test_lambda_handler.py) and against a real
SeaweedFS (tests/integration/test_lambda_seaweedfs.py). See docs/scaling.md.

An SQS record's ``body`` is either

(a) an **S3 event notification** (``{"Records":[{"eventSource":"aws:s3", "s3":{"object":
    {"key": ...}}}]}``, the key URL-encoded as S3 sends it: ``+`` for a space, ``%XX``
    escapes), for a pack written under ``packs/<device>/<batch>.tar``; or
(b) an **encode job** (:class:`jobqueue.job.EncodeJob` JSON), e.g. sent by the ingestor.

Each body becomes zero or more :class:`EncodeJob`; the injected encode function runs per
job. The answer is ``{"batchItemFailures": [{"itemIdentifier": <messageId>}, ...]}``
naming only the records to deliver again (the event source mapping needs
``FunctionResponseTypes: ["ReportBatchItemFailures"]``). Delivery is at least once: a
record may come again after a timeout or a lost answer, so the encode function must be
idempotent per batch, as for every runner.

Per record:

* encode ``OK`` → success; ``RETRY`` or an exception → failure (redelivered after the
  queue's visibility timeout; after the queue's ``maxReceiveCount`` SQS moves it to the
  dead-letter queue);
* ``POISON``, or ``ApproximateReceiveCount`` above ``max_receives`` → ``quarantine(job,
  receives)`` then success (a failing quarantine → failure);
* a body that is not one of the two shapes, or a key outside ``<prefix><device>/<batch>
  .tar`` (``..``, other prefixes, bad ids, over-long) → **rejected**: logged, counted,
  reported as success so SQS does not deliver it again and again. The S3 test event
  (``s3:TestEvent``) sent when a notification is configured is ignored the same way.

The handler never raises: an exception out of a Lambda handler fails the whole batch.

Module import needs neither boto3 nor the store: the real wiring comes from
``CAM_LAMBDA_FACTORY=module:function`` (a function returning ``(encode, quarantine)``),
imported at the first invocation (a cold start).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobqueue.errors import MalformedJobError
from jobqueue.job import (
    DEFAULT_PACK_PREFIX,
    EncodeFn,
    EncodeJob,
    Outcome,
    QuarantineFn,
    parse_pack_key,
)

log = logging.getLogger("jobqueue.lambda")

MAX_BODY_BYTES = 256 * 1024
"""SQS's largest message; a longer body is refused unread."""
MAX_S3_RECORDS = 100
S3_CREATED_PREFIX = "ObjectCreated:"


@dataclass
class LambdaStats:
    """What one invocation did (logged at its end; tests read it)."""

    records: int = 0
    jobs_ok: int = 0
    failures: int = 0
    quarantined: int = 0
    rejected: int = 0
    ignored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one rejected record."""
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def jobs_from_body(body: object, *, pack_prefix: str = DEFAULT_PACK_PREFIX) -> list[EncodeJob]:
    """The encode jobs an SQS message body carries (an S3 notification or a job).

    Returns:
        The jobs; an empty list for an S3 test event or a non-create S3 event.

    Raises:
        MalformedJobError: If the body is neither shape, or names a key outside the
            pack layout.
    """
    if not isinstance(body, str):
        raise MalformedJobError("bad_body", "body is not a string")
    if len(body) > MAX_BODY_BYTES:
        raise MalformedJobError("too_large", f"{len(body)} characters")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise MalformedJobError("bad_json", str(e)[:120]) from None
    if not isinstance(obj, dict):
        raise MalformedJobError("not_object")
    if "Records" in obj:
        return _jobs_from_s3_event(obj, pack_prefix)
    if obj.get("Event") == "s3:TestEvent":
        return []
    return [EncodeJob.parse(body, prefix=pack_prefix, max_bytes=MAX_BODY_BYTES)]


def _jobs_from_s3_event(obj: Mapping[str, Any], pack_prefix: str) -> list[EncodeJob]:
    records = obj.get("Records")
    if not isinstance(records, list) or len(records) > MAX_S3_RECORDS:
        raise MalformedJobError("bad_s3_event", "Records is not a list of at most "
                                f"{MAX_S3_RECORDS}")
    jobs = []
    for rec in records:
        if not isinstance(rec, dict) or rec.get("eventSource") != "aws:s3":
            raise MalformedJobError("bad_s3_event", "not an aws:s3 record")
        name = rec.get("eventName")
        if not isinstance(name, str) or not name.startswith(S3_CREATED_PREFIX):
            continue  # deletions and other events are not work
        s3 = rec.get("s3")
        obj_ = s3.get("object") if isinstance(s3, dict) else None
        raw_key = obj_.get("key") if isinstance(obj_, dict) else None
        if not isinstance(raw_key, str) or len(raw_key) > 3 * 1024:
            raise MalformedJobError("bad_s3_event", "no s3.object.key")
        # S3 URL-encodes keys in notifications: '+' is a space, %XX an escaped byte.
        try:
            key = urllib.parse.unquote_plus(raw_key, errors="strict")
        except UnicodeDecodeError:
            raise MalformedJobError("bad_key", "escapes are not UTF-8") from None
        device, batch = parse_pack_key(key, pack_prefix)
        jobs.append(EncodeJob(device, batch, key))
    return jobs


def _receives(record: Mapping[str, Any]) -> int:
    attrs = record.get("attributes")
    raw = attrs.get("ApproximateReceiveCount") if isinstance(attrs, dict) else None
    try:
        n = int(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else 1
    except ValueError:
        n = 1
    return max(1, min(n, 1_000_000))


def handle_sqs_event(event: object, encode: EncodeFn, *, quarantine: QuarantineFn | None = None,
                     max_receives: int = 5, pack_prefix: str = DEFAULT_PACK_PREFIX,
                     stats: LambdaStats | None = None) -> dict[str, list[dict[str, str]]]:
    """Run ``encode`` for every job in an SQS event; name the records to deliver again.

    Args:
        event: The Lambda event (``{"Records": [<SQS message>, ...]}``).
        encode: The encode function (idempotent per batch).
        quarantine: Records a job that will never succeed; None: such a job is logged
            and dropped.
        max_receives: A job received more often than this is quarantined unrun.
        pack_prefix: The store's pack prefix (``objstore.pack_prefix``).
        stats: Filled in when given.

    Returns:
        The partial batch response.
    """
    st = stats if stats is not None else LambdaStats()
    failures: list[dict[str, str]] = []
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        log.error("event without Records ignored")
        st.reject("bad_event")
        return {"batchItemFailures": failures}
    for record in records:
        st.records += 1
        if not isinstance(record, dict):
            st.reject("bad_record")
            continue
        msg_id = record.get("messageId")
        if not isinstance(msg_id, str) or not msg_id or len(msg_id) > 256:
            # Without an identifier a failure cannot be reported; an empty one would
            # fail the whole batch.
            st.reject("no_message_id")
            log.error("SQS record without a messageId dropped")
            continue
        try:
            jobs = jobs_from_body(record.get("body"), pack_prefix=pack_prefix)
        except MalformedJobError as e:
            st.reject(e.reason)
            log.warning("SQS message %s rejected: %s", msg_id[:80], e)
            continue
        if not jobs:
            st.ignored += 1
            continue
        receives = _receives(record)
        if not all(_run_one(job, receives, encode, quarantine, max_receives=max_receives,
                            st=st)
                   for job in jobs):
            failures.append({"itemIdentifier": msg_id})
            st.failures += 1
    log.info("lambda batch: %s", st)
    return {"batchItemFailures": failures}


def _run_one(job: EncodeJob, receives: int, encode: EncodeFn, quarantine: QuarantineFn | None,
             *, max_receives: int, st: LambdaStats) -> bool:
    if receives > max_receives:
        return _quarantine(job, receives, quarantine, st, "received too often")
    try:
        outcome = encode(job)
    except Exception:
        log.exception("encode of %s failed", job.msg_id)
        return False
    if outcome is Outcome.OK:
        st.jobs_ok += 1
        return True
    if outcome is Outcome.POISON:
        return _quarantine(job, receives, quarantine, st, "poison")
    return False


def _quarantine(job: EncodeJob, receives: int, quarantine: QuarantineFn | None,
                st: LambdaStats, why: str) -> bool:
    if quarantine is not None:
        try:
            quarantine(job, receives)
        except Exception:
            log.exception("quarantine of %s failed", job.msg_id)
            return False
    st.quarantined += 1
    log.warning("job %s quarantined after %d receives (%s)", job.msg_id, receives, why)
    return True


_wiring: tuple[EncodeFn, QuarantineFn | None] | None = None


def _load_wiring() -> tuple[EncodeFn, QuarantineFn | None]:
    global _wiring  # noqa: PLW0603 - built once per Lambda execution environment
    if _wiring is None:
        spec = os.environ.get("CAM_LAMBDA_FACTORY", "")
        module, _, func = spec.partition(":")
        if not module or not func:
            raise RuntimeError("set CAM_LAMBDA_FACTORY=module:function (returns "
                               "(encode, quarantine))")
        _wiring = getattr(importlib.import_module(module), func)()
    return _wiring


def handler(event: dict[str, Any], context: object) -> dict[str, list[dict[str, str]]]:
    """The Lambda function (``jobqueue.lambda_handler.handler``)."""
    encode, quarantine = _load_wiring()
    return handle_sqs_event(
        event, encode, quarantine=quarantine,
        max_receives=int(os.environ.get("CAM_LAMBDA_MAX_RECEIVES", "5")),
        pack_prefix=os.environ.get("CAM_LAMBDA_PACK_PREFIX", DEFAULT_PACK_PREFIX))
