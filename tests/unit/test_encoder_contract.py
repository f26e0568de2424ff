"""Ready events, manifests, names and the timeline as the encoder reads them (pure)."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.events import (
    BadManifestError,
    Malformed,
    MalformedEventError,
    Manifest,
    ReadyEvent,
    VideoEvent,
)
from contract.layout import utc_date, utc_stamp, video_dir, video_stems
from contract.topics import all_devices, shared
from encoder.timeline import Timeline

parse_ready = ReadyEvent.parse
parse_manifest = Manifest.parse


def ready_topic_filter(group: str, prefix: str) -> str:
    return shared(group, all_devices(prefix, "ready"))


def video_event(**fields: Any) -> dict[str, Any]:
    return VideoEvent(**fields).to_obj()

EVENT: dict[str, Any] = {
    "v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001", "frames": 300,
    "first_capture_ms": 1795515300000, "last_capture_ms": 1795515599000,
    "location": "batches/cam01/cam01-20261124T101500Z-0001",
}


def payload(**changes: Any) -> bytes:
    obj = {**EVENT, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_contract_example_parses() -> None:
    ev = parse_ready("cam/cam01/ready", payload(), "cam")
    assert (ev.device, ev.batch, ev.frames) == ("cam01", EVENT["batch"], 300)
    assert ev.location == EVENT["location"]


def test_extra_fields_are_allowed() -> None:
    assert parse_ready("cam/cam01/ready", payload(extra="x"), "cam").frames == 300


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", Malformed.BAD_JSON),
    (b"\xff\xfe", Malformed.BAD_JSON),
    (b"[1, 2]", Malformed.NOT_OBJECT),
    (payload(v=2), Malformed.BAD_VERSION),
    (payload(v=True), Malformed.BAD_VERSION),
    (payload(v=...), Malformed.BAD_VERSION),
    (payload(device="../x"), Malformed.BAD_FIELD),
    (payload(batch="a/b"), Malformed.BAD_FIELD),
    (payload(batch=".."), Malformed.BAD_FIELD),
    (payload(frames=-1), Malformed.BAD_FIELD),
    (payload(frames="300"), Malformed.BAD_FIELD),
    (payload(frames=True), Malformed.BAD_FIELD),
    (payload(first_capture_ms=...), Malformed.BAD_FIELD),
    (payload(last_capture_ms=1), Malformed.BAD_FIELD),
    (payload(location="../../etc"), Malformed.BAD_LOCATION),
    (payload(location="/etc/passwd"), Malformed.BAD_LOCATION),
    (payload(location="batches/cam01/../../../etc"), Malformed.BAD_LOCATION),
    (payload(location="batches/cam02/cam01-20261124T101500Z-0001"), Malformed.BAD_LOCATION),
    (payload(location=...), Malformed.BAD_LOCATION),
])
def test_malformed_events_are_refused_with_reason(raw: bytes, reason: Malformed) -> None:
    with pytest.raises(MalformedEventError) as err:
        parse_ready("cam/cam01/ready", raw, "cam")
    assert err.value.reason is reason


def test_event_must_come_on_its_devices_topic() -> None:
    for topic in ("cam/cam02/ready", "other/cam01/ready", "cam/cam01/video"):
        with pytest.raises(MalformedEventError) as err:
            parse_ready(topic, payload(), "cam")
        assert err.value.reason is Malformed.TOPIC_MISMATCH


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                        c, max_size=6),
                    max_leaves=20))
def test_any_json_is_parsed_or_refused_never_crashes(obj: Any) -> None:
    try:
        ev = parse_ready("cam/cam01/ready", json.dumps(obj).encode(), "cam")
    except MalformedEventError:
        return
    assert ev.location == f"batches/{ev.device}/{ev.batch}"


@given(st.fixed_dictionaries({k: st.just(v) for k, v in EVENT.items()}),
       st.sampled_from(["device", "batch", "location"]), st.text(max_size=40))
def test_no_location_leaves_the_batches_folder(base: dict[str, Any], key: str,
                                               value: str) -> None:
    obj = {**base, key: value}
    try:
        ev = parse_ready(f"cam/{obj['device']}/ready", json.dumps(obj).encode(), "cam")
    except MalformedEventError:
        return
    parts = ev.location.split("/")
    assert len(parts) == 3 and parts[0] == "batches"
    assert ".." not in parts and "" not in parts


MANIFEST: dict[str, Any] = {
    "v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001",
    "sealed_ms": 1795515600123,
    "frames": [{"file": "frames/1795515300000_deadbeef_0000000000.jpg", "boot_id": 3735928559,
                "frame_seq": 0, "capture_ms": 1795515300000, "clock_synced": True,
                "ts_ms": 1795515300000, "bytes": 51234, "crc32": 305419896}],
    "first_capture_ms": 1795515300000, "last_capture_ms": 1795515599000,
}


def manifest(**changes: Any) -> bytes:
    return json.dumps({**MANIFEST, **changes}).encode()


def test_layout_example_manifest_parses() -> None:
    m = parse_manifest(manifest(), "cam01", MANIFEST["batch"])
    assert len(m.frames) == 1
    f = m.frames[0]
    assert (f.file, f.ts_ms, f.crc32, f.size) == (MANIFEST["frames"][0]["file"],
                                                  1795515300000, 305419896, 51234)


@pytest.mark.parametrize("raw", [
    b"", b"[]", manifest(v=2), manifest(device="cam02"), manifest(batch="other"),
    manifest(frames={}), manifest(frames=[{"file": "../../etc/passwd", "ts_ms": 1}]),
    manifest(frames=[{"file": "frames/../../x.jpg", "ts_ms": 1}]),
    manifest(frames=[{"file": "/etc/x.jpg", "ts_ms": 1}]),
    manifest(frames=[{"file": "frames/a.jpg", "ts_ms": -1}]),
    manifest(frames=[{"file": "frames/a.jpg", "ts_ms": 1, "crc32": 2**32}]),
    manifest(frames=[{"file": "frames/a.jpg", "ts_ms": 1}, {"file": "frames/a.jpg", "ts_ms": 2}]),
    manifest(first_capture_ms=5, last_capture_ms=4),
])
def test_bad_manifests_are_refused(raw: bytes) -> None:
    with pytest.raises(BadManifestError):
        parse_manifest(raw, "cam01", MANIFEST["batch"])


def test_names_follow_the_layout() -> None:
    assert utc_stamp(1795515300000) == "20261124T101500Z"
    assert utc_date(1795515300000) == "2026-11-24"
    assert video_dir("cam01", 1795515300000) == "videos/cam01/2026-11-24"
    assert video_stems("cam01", "cam01-20261124T101500Z-0001", 1795515300000,
                       1795515599000) == (
        "cam01_20261124T101500Z_20261124T101959Z",
        "cam01_20261124T101500Z_20261124T101959Z_0001")
    assert ready_topic_filter("encoders", "cam") == "$share/encoders/cam/+/ready"


def test_video_event_has_exactly_the_contract_fields() -> None:
    ev = video_event(device="cam01", batch="b", location="videos/x.mp4", frames=3,
                     frames_skipped=1, duration_s=0.1234, size=10, first_capture_ms=1,
                     last_capture_ms=2)
    assert set(ev) == {"v", "device", "batch", "location", "frames", "frames_skipped",
                       "duration_s", "bytes", "codec", "first_capture_ms", "last_capture_ms"}
    assert (ev["codec"], ev["duration_s"]) == ("h264", 0.123)


def test_fixed_timeline_counts_frames() -> None:
    t = Timeline("fixed", 29.97)
    assert t.time_base == Fraction(100, 2997)
    assert [t.next_pts(x) for x in (5, 0, 99999)] == [0, 1, 2]
    assert t.last_duration() == 1


@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=50))
def test_capture_timeline_strictly_increases_from_zero(ts: list[int]) -> None:
    t = Timeline("capture", 30)
    pts = [t.next_pts(x) for x in ts]
    assert pts[0] == 0
    assert all(b > a for a, b in itertools.pairwise(pts))
    for i in range(1, len(ts)):
        if ts[i] - ts[0] > pts[i - 1]:
            assert pts[i] == ts[i] - ts[0]
    assert t.last_duration() >= 1
