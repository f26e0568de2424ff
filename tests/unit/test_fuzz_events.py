"""Fuzzed events on every JSON topic the services read: refused or taken, never a crash.

* ``cam/<id>/ready`` (encoder): :meth:`contract.events.ReadyEvent.parse` either returns an
  event whose batch folder is inside ``batches/<device>/`` or raises
  :class:`MalformedEventError`, for near-valid events with any field replaced by any
  JSON value, for byte-level damage and for pathological JSON (deep nesting, huge
  numbers).
* ``manifest.json`` (encoder, written by the ingestor):
  :meth:`contract.events.Manifest.parse` raises only :class:`BadManifestError`.
* ``cam/<id>/status`` (written by devices, retained), ``cam/<id>/video``,
  ``svc/<name>/status`` and ``alerts/...`` (monitor and ``camstack status``):
  the health model, the alert rules and the status table never raise.

About 3,000 cases per run (the ``fuzz(n)`` decorators).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import AlertSettings
from contract.events import BadManifestError, MalformedEventError, Manifest, ReadyEvent
from contract.ids import DEVICE_ID_RE
from contract.ids import SAFE_NAME_RE as BATCH_NAME_RE
from monitor.health import AlertBook, HealthModel, evaluate, format_status

T0 = 1_795_515_300_000
DEVICE = "cam01"
BATCH = "cam01-20261124T101500Z-0001"
READY: dict[str, Any] = {
    "v": 1, "device": DEVICE, "batch": BATCH, "frames": 300,
    "first_capture_ms": T0, "last_capture_ms": T0 + 299_000,
    "location": f"batches/{DEVICE}/{BATCH}",
}
MANIFEST: dict[str, Any] = {
    "v": 1, "device": DEVICE, "batch": BATCH, "sealed_ms": T0 + 300_123,
    "frames": [{"file": "frames/1795515300000_deadbeef_0000000000.jpg", "boot_id": 3735928559,
                "frame_seq": 0, "capture_ms": T0, "clock_synced": True, "ts_ms": T0,
                "bytes": 51234, "crc32": 305419896}],
    "first_capture_ms": T0, "last_capture_ms": T0,
}

def fuzz(n: int) -> settings:
    """Hypothesis settings for ``n`` cases (generating nested JSON dominates the time)."""
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Any JSON value, with the numbers that break naive code: huge integers (json reads
# them exactly), infinities and NaN (Python's json reads and writes them), negatives.
SCALARS = (st.none() | st.booleans() | st.integers(-(10**30), 10**30)
           | st.just(10**400) | st.just(-(10**400)) | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(["online", "offline", "degraded", "", "..",
                                                     "../../etc", "/abs", "cam01\x00"]))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.text(max_size=12), c, max_size=5), max_leaves=8)


def deep(n: int) -> bytes:
    """JSON nested ``n`` levels deep: Python's parser raises RecursionError."""
    return b"[" * n + b"]" * n


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    """A valid payload with bytes flipped, cut, or inserted."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def ready_payloads() -> st.SearchStrategy[bytes]:
    field_changed = st.builds(
        lambda k, v, drop: json.dumps({kk: vv for kk, vv in {**READY, k: v}.items()
                                       if not (drop and kk == k)}).encode(),
        st.sampled_from([*sorted(READY), "extra"]), JSON, st.booleans())
    return (field_changed | damaged(json.dumps(READY).encode())
            | st.sampled_from([deep(1100), deep(5000), deep(100_000)])
            | st.builds(lambda v: json.dumps(v).encode(), JSON)
            | st.binary(max_size=200))


@fuzz(1500)
@given(ready_payloads(), st.sampled_from([f"cam/{DEVICE}/ready", "cam/other/ready",
                                          "cam/../ready", "cam//ready"]))
def test_ready_events_are_parsed_safely_or_refused(payload: bytes, topic: str) -> None:
    try:
        ev = parse_ready(topic, payload, "cam")
    except MalformedEventError:
        return
    # Taken: it names one batch folder of its own device, and nothing else.
    assert topic == f"cam/{ev.device}/ready"
    assert DEVICE_ID_RE.fullmatch(ev.device) and BATCH_NAME_RE.fullmatch(ev.batch)
    assert ev.location == f"batches/{ev.device}/{ev.batch}"
    assert 0 <= ev.first_capture_ms <= ev.last_capture_ms


@fuzz(800)
@given(st.sampled_from(sorted(MANIFEST)) | st.sampled_from(sorted(MANIFEST["frames"][0])),
       JSON, st.booleans(), st.integers(0, 3))
def test_manifests_are_parsed_or_refused(key: str, value: Any, in_frame: bool,
                                         how: int) -> None:
    man = json.loads(json.dumps(MANIFEST))
    target = man["frames"][0] if in_frame and key in man["frames"][0] else man
    target[key] = value
    raw = json.dumps(man).encode()
    if how == 1:
        raw = raw[: len(raw) // 2]
    elif how == 2:
        raw = b'{"v":1,"frames":' + deep(50_000)
    try:
        parsed = parse_manifest(raw, DEVICE, BATCH)
    except BadManifestError:
        return
    for f in parsed.frames:
        assert not f.file.startswith("/") and ".." not in f.file.split("/")


STATUS_KEYS = ["state", "rssi", "heap_free", "psram_free", "queue", "frames_sent",
               "frames_dropped", "uptime_s", "boot_id", "fw", "frames_stored", "rejected",
               "dropped", "alerts", "ts_ms", "location", "frames", "last_capture_ms",
               "first_capture_ms", "batch", "storage_ok"]
TOPICS = ["cam/c1/status", "cam/c2/status", "cam/c1/video", "svc/ingestor/status",
          "svc/encoder/status", "cam/c1/frame", "svc/x", "cam/c1/status/x"]


def status_payloads() -> st.SearchStrategy[bytes]:
    fields = st.dictionaries(st.sampled_from(STATUS_KEYS), JSON, max_size=8)
    return (st.builds(lambda d: json.dumps(d).encode(), fields)
            | st.sampled_from([deep(1100), deep(5000), deep(100_000)])
            | st.binary(max_size=100) | st.just(b""))


@fuzz(400)
@given(st.lists(st.tuples(st.sampled_from(TOPICS), status_payloads(), st.booleans(),
                          st.integers(-(10**6), 10**9)), max_size=8),
       st.integers(0, 10**10))
def test_monitor_survives_any_status_video_or_service_payload(
        messages: list[tuple[str, bytes, bool, int]], later: int) -> None:
    model = HealthModel(started_ms=T0)
    for topic, payload, retained, dt in messages:
        model.apply(topic, payload, T0 + dt, retained=retained)
    now = T0 + later
    alerts = evaluate(model, AlertSettings(), now)
    text = format_status(model, now, alerts)
    assert text.endswith("\n")
    for a in alerts:
        assert isinstance(a.message, str)
        assert not (isinstance(a.value, float) and math.isnan(a.value))


@fuzz(300)
@given(st.sampled_from(["device_offline", "no_frame", "x"]), st.text(max_size=20),
       status_payloads())
def test_retained_alerts_of_any_shape_are_adopted_or_ignored(rule: str, subject: str,
                                                             payload: bytes) -> None:
    book = AlertBook()
    book.adopt(rule, subject, payload)
    changes = book.update([], T0)
    assert len(changes.cleared) <= 1


parse_ready = ReadyEvent.parse
parse_manifest = Manifest.parse
