"""The contract's producers and consumers agree: every event and the manifest round-trip.

What the ingestor writes (``Manifest.to_json``, ``ReadyEvent.to_json``) is what the
encoder parses, what the encoder writes (``VideoEvent``) is what the monitor and people
read, and a status survives its own parser. Hypothesis draws the values, including the
edges of every range.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from contract.events import (
    MAX_MS,
    MAX_U32,
    Manifest,
    ManifestFrame,
    ReadyEvent,
    Status,
    VideoEvent,
)
from contract.layout import frame_file_name
from contract.topics import (
    all_devices,
    device_acl_patterns,
    parse_device_topic,
    ready_topic,
    shared,
    status_topic,
    video_topic,
)

IDS = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
BATCHES = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
MS = st.integers(0, MAX_MS)
U32 = st.integers(0, MAX_U32)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    n = draw(st.integers(0, 20))
    seqs = draw(st.lists(U32, min_size=n, max_size=n, unique=True))
    frames = tuple(
        ManifestFrame(
            file=f"frames/{frame_file_name(draw(st.integers(0, 10**13 - 1)), 7, seq)}",
            ts_ms=draw(MS), crc32=draw(st.none() | U32), size=draw(st.none() | MS),
            boot_id=draw(st.none() | U32), frame_seq=seq, capture_ms=draw(st.none() | MS),
            clock_synced=draw(st.none() | st.booleans()))
        for seq in seqs)
    first = draw(MS)
    last = draw(st.integers(first, MAX_MS))
    return Manifest(draw(IDS), draw(BATCHES), frames, first, last, draw(st.none() | MS))


@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    assert Manifest.parse(m.to_json(), m.device, m.batch) == m


@given(manifests())
def test_ready_event_round_trip(m: Manifest) -> None:
    ev = ReadyEvent.of(m)
    assert ev.frames == len(m.frames) and ev.location == f"batches/{m.device}/{m.batch}"
    assert ReadyEvent.parse(ready_topic("cam", ev.device), ev.to_json(), "cam") == ev


@given(device=IDS, batch=BATCHES, name=st.from_regex(r"[A-Za-z0-9_]{1,40}", fullmatch=True),
       frames=MS, skipped=MS, duration=st.floats(0, 1e6, allow_nan=False), size=MS,
       first=MS, codec=st.sampled_from(["h264", "hevc"]))
def test_video_event_round_trip(device: str, batch: str, name: str, frames: int, skipped: int,
                                duration: float, size: int, first: int, codec: str) -> None:
    ev = VideoEvent(device, batch, f"videos/{device}/2026-11-24/{name}.mp4", frames, skipped,
                    round(duration, 3), size, first, first, codec)
    assert VideoEvent.parse(ev.to_json()) == ev


SCALARS = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.floats(-(2.0**53), 2.0**53, allow_nan=False)
           | st.text(alphabet=st.characters(categories=["L", "N", "P", "S"]), max_size=100))


@given(state=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=20),
       fields=st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), SCALARS,
                              max_size=20))
def test_status_round_trip(state: str, fields: dict[str, object]) -> None:
    fields.pop("state", None)
    st_ = Status(state, fields)
    assert Status.parse(st_.to_json()) == st_


def test_producers_write_what_the_docs_show() -> None:
    # docs/protocol.md's example ready event, byte for byte the same object.
    ev = ReadyEvent("cam01", "cam01-20261124T101500Z-0001", 300, 1795515300000, 1795515599000)
    assert json.loads(ev.to_json()) == {
        "v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001", "frames": 300,
        "first_capture_ms": 1795515300000, "last_capture_ms": 1795515599000,
        "location": "batches/cam01/cam01-20261124T101500Z-0001"}


@given(IDS, st.sampled_from(["frame", "status", "cmd", "ready", "video"]))
def test_topics_parse_back(device: str, kind: str) -> None:
    topic = f"cam/{device}/{kind}"
    assert parse_device_topic(topic, "cam") == (device, kind)
    assert parse_device_topic(topic, "other") is None
    assert parse_device_topic(topic + "/x", "cam") is None


def test_topic_builders() -> None:
    assert status_topic("cam", "c1") == "cam/c1/status"
    assert video_topic("cam", "c1") == "cam/c1/video"
    assert shared("encoders", all_devices("cam", "ready")) == "$share/encoders/cam/+/ready"
    assert parse_device_topic("cam/a b/status", "cam") is None  # not a device id
    assert device_acl_patterns("cam") == ["pattern write cam/%u/frame",
                                          "pattern write cam/%u/status",
                                          "pattern read cam/%u/cmd"]
