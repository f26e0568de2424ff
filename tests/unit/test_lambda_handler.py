"""The Lambda handler on event shapes built after AWS's documentation. No AWS here.

Real Lambda and SQS never ran for these tests: the events are written following the
documented structures — the S3 event notification message (version 2.1, "Event message
structure", Amazon S3 User Guide, docs.aws.amazon.com/AmazonS3/latest/userguide/
notification-content-structure.html) delivered inside the body of an SQS message as
Lambda receives it ("Using Lambda with Amazon SQS", the SQS event example), and the
partial batch response ``{"batchItemFailures": [{"itemIdentifier": ...}]}`` ("Handling
errors for an SQS event source in Lambda"). Values are ours.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from jobqueue.job import EncodeJob, Outcome
from jobqueue.lambda_handler import LambdaStats, handle_sqs_event, jobs_from_body

BATCH = "cam01-20261124T101500Z-0001"
KEY = f"packs/cam01/{BATCH}.tar"


def s3_notification(key: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    """An S3 event notification, version 2.1, with every documented field."""
    return {"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-west-2",
        "eventTime": "2026-11-24T10:20:00.123Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLEINGESTOR"},
        "requestParameters": {"sourceIPAddress": "203.0.113.10"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                             "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUW"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "camstack-packs",
            "bucket": {"name": "camstack-media",
                       "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": "arn:aws:s3:::camstack-media"},
            "object": {"key": key, "size": 15360000, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                       "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                       "sequencer": "0055AED6DCD90281E5"},
        },
    }]}


def sqs_record(body: str, message_id: str = "059f36b4-87a3-44ab-83d2-661975830a7d",
               receives: int = 1) -> dict[str, Any]:
    """One SQS message as Lambda delivers it, with every documented field."""
    return {
        "messageId": message_id,
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receives),
                       "SentTimestamp": "1795515600123",
                       "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                       "ApproximateFirstReceiveTimestamp": "1795515600130"},
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-west-2:123456789012:camstack-encode",
        "awsRegion": "us-west-2",
    }


def s3_body(key: str, **kw: Any) -> str:
    # S3 URL-encodes the key in notifications (spaces as '+').
    return json.dumps(s3_notification(urllib.parse.quote_plus(key, safe="/"), **kw))


class Encoder:
    def __init__(self, outcomes: dict[str, Outcome] | None = None) -> None:
        self.seen: list[EncodeJob] = []
        self.outcomes = outcomes or {}

    def __call__(self, job: EncodeJob) -> Outcome:
        self.seen.append(job)
        out = self.outcomes.get(job.batch, Outcome.OK)
        if out == "raise":
            raise RuntimeError("store away")
        return out


def test_s3_notification_via_sqs_runs_the_encode_function() -> None:
    enc = Encoder()
    resp = handle_sqs_event({"Records": [sqs_record(s3_body(KEY))]}, enc)
    assert resp == {"batchItemFailures": []}
    assert enc.seen == [EncodeJob("cam01", BATCH, KEY)]


def test_job_message_via_sqs() -> None:
    enc = Encoder()
    job = EncodeJob.for_batch("cam01", BATCH, sha256="ab" * 32)
    resp = handle_sqs_event({"Records": [sqs_record(job.to_json().decode())]}, enc)
    assert resp == {"batchItemFailures": []} and enc.seen == [job]


def test_url_encoded_keys_are_decoded_then_checked() -> None:
    assert jobs_from_body(json.dumps(s3_notification("packs/cam%5F01/b%2D1.tar"))) == [
        EncodeJob("cam_01", "b-1", "packs/cam_01/b-1.tar")]
    for raw in ["packs/cam+01/b.tar",  # '+' is a space: not a device id
                "packs/cam01/b%2B1.tar",  # %2B is '+': not in a batch name
                "packs/cam01/%2E%2E.tar", "packs/%2E%2E/b.tar", "packs%2Fcam01%2F..%2Fb.tar",
                "packs/cam01/b%00.tar", "packs/cam01/b%ff.tar"]:
        stats = LambdaStats()
        resp = handle_sqs_event({"Records": [sqs_record(json.dumps(s3_notification(raw)))]},
                                Encoder(), stats=stats)
        assert resp == {"batchItemFailures": []}, raw  # rejected, not redelivered
        assert stats.rejected == 1, raw


def test_partial_batch_failures_name_only_the_failed_records() -> None:
    enc = Encoder({"b-2": Outcome.RETRY, "b-3": "raise"})  # type: ignore[dict-item]
    records = [sqs_record(s3_body(f"packs/cam01/b-{n}.tar"), message_id=f"m{n}")
               for n in range(1, 5)]
    stats = LambdaStats()
    resp = handle_sqs_event({"Records": records}, enc, stats=stats)
    assert resp == {"batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "m3"}]}
    assert [j.batch for j in enc.seen] == ["b-1", "b-2", "b-3", "b-4"]
    assert (stats.jobs_ok, stats.failures) == (2, 2)


def test_redelivery_is_at_least_once_and_poison_is_quarantined() -> None:
    quarantined: list[tuple[str, int]] = []

    def quarantine(job: EncodeJob, n: int) -> None:
        quarantined.append((job.batch, n))

    enc = Encoder({"b-1": Outcome.RETRY, "b-2": Outcome.POISON})
    ev = {"Records": [sqs_record(s3_body("packs/cam01/b-1.tar"), "m1", receives=2),
                      sqs_record(s3_body("packs/cam01/b-2.tar"), "m2")]}
    assert handle_sqs_event(ev, enc, quarantine=quarantine, max_receives=3) == {
        "batchItemFailures": [{"itemIdentifier": "m1"}]}
    # The fourth receive of b-1 is over the limit: quarantined without running encode.
    ev = {"Records": [sqs_record(s3_body("packs/cam01/b-1.tar"), "m1", receives=4)]}
    assert handle_sqs_event(ev, enc, quarantine=quarantine, max_receives=3) == {
        "batchItemFailures": []}
    assert quarantined == [("b-2", 1), ("b-1", 4)]
    assert [j.batch for j in enc.seen] == ["b-1", "b-2"]

    def broken(job: EncodeJob, n: int) -> None:
        raise RuntimeError("database away")

    ev = {"Records": [sqs_record(s3_body("packs/cam01/b-2.tar"), "m2")]}
    assert handle_sqs_event(ev, enc, quarantine=broken) == {
        "batchItemFailures": [{"itemIdentifier": "m2"}]}


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "bad_json"),
    ("[" * 5000, "bad_json"),
    ("[]", "not_object"),
    ("x" * (300 * 1024), "too_large"),
    (json.dumps({"Records": "nope"}), "bad_s3_event"),
    (json.dumps({"Records": [{"eventSource": "aws:sqs"}]}), "bad_s3_event"),
    (json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                              "s3": {"object": {}}}]}), "bad_s3_event"),
    (json.dumps({"Records": [s3_notification("k")["Records"][0]] * 101}), "bad_s3_event"),
    (s3_body("videos/cam01/x.tar"), "bad_key"),
    (s3_body("packs/cam01/" + "b" * 5000 + ".tar"), "bad_s3_event"),
    (s3_body("packs/cam01/../cam02/b.tar"), "bad_key"),
    (s3_body("packs/cam01/b.tar.gz"), "bad_key"),
    (json.dumps({"v": 1, "device": "cam01", "batch": "..", "pack_key": "packs/cam01/...tar"}),
     "bad_batch"),
])
def test_hostile_bodies_are_rejected_not_redelivered(body: str, reason: str) -> None:
    stats = LambdaStats()
    enc = Encoder()
    resp = handle_sqs_event({"Records": [sqs_record(body), sqs_record(s3_body(KEY), "ok")]},
                            enc, stats=stats)
    assert resp == {"batchItemFailures": []}
    assert stats.reasons == {reason: 1}
    assert [j.batch for j in enc.seen] == [BATCH]  # the good record still ran


def test_odd_events_never_raise() -> None:
    enc = Encoder()
    for ev in [None, {}, {"Records": None}, {"Records": [None, 5, {"body": "x"}]},
               {"Records": [{"messageId": "", "body": s3_body(KEY)}]},
               {"Records": [{"messageId": "m", "body": 5}]},
               {"Records": [dict(sqs_record(s3_body(KEY)), attributes={
                   "ApproximateReceiveCount": "lots"})]}]:
        assert handle_sqs_event(ev, enc) == {"batchItemFailures": []}


def test_test_events_and_deletions_are_ignored() -> None:
    enc = Encoder()
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                             "Time": "2026-11-24T10:20:00.000Z", "Bucket": "camstack-media",
                             "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkw"})
    stats = LambdaStats()
    ev = {"Records": [sqs_record(test_event, "t"),
                      sqs_record(s3_body(KEY, event_name="ObjectRemoved:Delete"), "d")]}
    assert handle_sqs_event(ev, enc, stats=stats) == {"batchItemFailures": []}
    assert enc.seen == [] and stats.ignored == 2 and stats.rejected == 0


def test_module_imports_without_boto3() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys; import jobqueue.lambda_handler; "
            "assert 'boto3' not in sys.modules and 'nats' not in sys.modules, sorted(sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def test_lambda_dockerfile_copies_what_exists_and_the_context_allows() -> None:
    import re  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "Dockerfile.lambda").read_text(encoding="utf-8")
    allowed = {line[1:] for line in (repo / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (repo / src).exists(), src
            assert src in allowed, f"{src} is excluded by .dockerignore"
    assert 'CMD ["jobqueue.lambda_handler.handler"]' in text
    assert "awslambdaric==" in text
