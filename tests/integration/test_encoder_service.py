"""The real encoder process (``python -m encoder``) against the real broker and disk.

Each test uses its own encoder account and share group: a stopped encoder's persistent
session keeps its shared subscription, and would otherwise be handed other tests' events.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg, write_batch
from camstack.mqttwait import Collector
from camstack.procs import ServiceProcess, scrape, service_config
from contract.events import VideoEvent
from encoder.muxer import EncodeOptions, FrameInput, encode_video, probe_video

pytestmark = pytest.mark.integration

T0 = 1795515300000


def uid() -> str:
    return uuid.uuid4().hex[:6]


_STARTED: list[ServiceProcess] = []


@pytest.fixture(autouse=True)
def _no_leftover_encoders() -> Iterator[None]:
    """A failed test must not leave its encoder running into the next ones."""
    yield
    while _STARTED:
        _STARTED.pop().stop()


class Encoder:
    """An encoder process with its own account, share group and storage root."""

    def __init__(self, broker: BrokerHandle, root: Path, tmp: Path, *, account: str | None = None,
                 group: str | None = None, **sections: dict[str, Any]) -> None:
        self.account = account or f"encoder-{uid()}"
        self.group = group or f"enc-{uid()}"
        if self.account not in {a.name for a in broker.store.list()}:
            broker.add_service(self.account)
        encode = {"preset": "ultrafast", "decode_threads": 2, **sections.pop("encode", {})}
        work = {"retry_backoff_s": 0.2, **sections.pop("work", {})}
        self.config = service_config(
            broker, self.account, root, tmp / f"{self.account}.toml", encode=encode, work=work,
            mqtt={"session_expiry_s": 120}, **sections)
        text = self.config.read_text()
        self.config.write_text(f'share_group = "{self.group}"\n' + text)
        self.tmp = tmp
        self.runs = 0
        self.proc: ServiceProcess | None = None

    def start(self) -> ServiceProcess:
        self.runs += 1
        self.proc = ServiceProcess("encoder", self.config,
                                   self.tmp / f"{self.account}-{self.runs}.log").start()
        _STARTED.append(self.proc)
        self.proc.wait_event("encoder_ready", 30)
        return self.proc


@pytest.fixture
def operator(broker: BrokerHandle) -> Iterator[Collector]:
    name = f"operator-{uid()}"
    broker.add_service(name)
    c = broker.client(name, client_id=name)
    yield Collector(c)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def announcer(broker: BrokerHandle) -> Iterator[mqtt.Client]:
    """Publishes ready events with an ingestor account, as the ingestor would."""
    name = f"ingestor-{uid()}"
    broker.add_service(name)
    c = broker.client(name, client_id=name)
    yield c
    c.disconnect()
    c.loop_stop()


def announce(client: mqtt.Client, device: str, event: dict[str, Any] | bytes) -> None:
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    info = client.publish(f"cam/{device}/ready", payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()


def videos_of(root: Path, device: str) -> list[Path]:
    return sorted((root / "videos" / device).rglob("*.mp4"))


def leftovers(root: Path) -> list[Path]:
    """Hidden partial files anywhere under videos/."""
    return sorted(p for p in (root / "videos").rglob(".*") if p.is_file())


def video_events(col: Collector, device: str) -> list[dict[str, Any]]:
    # No lock: this runs inside Collector.wait_for, which holds it (list copy is atomic).
    return [json.loads(m.payload) for m in list(col.messages)
            if m.topic == f"cam/{device}/video"]


def test_frames_in_video_out_frames_purged_event_published(
        broker: BrokerHandle, tmp_path: Path, operator: Collector,
        announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    enc = Encoder(broker, root, tmp_path)
    svc = enc.start()
    d = f"cam{uid()}"
    operator.subscribe(f"cam/{d}/video")
    operator.subscribe(f"svc/{enc.account}/status")
    jpegs = [make_jpeg(160, 120, i) for i in range(24)]
    jpegs[5] = jpegs[5][: len(jpegs[5]) // 2]  # one truncated frame
    event = write_batch(root, d, jpegs)
    bdir = root / event["location"]
    announce(announcer, d, event)
    assert operator.wait_for(lambda ms: bool(video_events(operator, d)), 30)
    (video,) = video_events(operator, d)
    mp4s = videos_of(root, d)
    assert len(mp4s) == 1
    mp4 = mp4s[0]
    assert video == {
        "v": 1, "device": d, "batch": event["batch"],
        "location": mp4.relative_to(root).as_posix(), "frames": 23, "frames_skipped": 1,
        "duration_s": pytest.approx(23 / 30, abs=0.002), "bytes": mp4.stat().st_size,
        "codec": "h264", "first_capture_ms": event["first_capture_ms"],
        "last_capture_ms": event["last_capture_ms"],
    }
    assert video["location"] == (f"videos/{d}/2026-11-24/"
                                 f"{d}_20261124T101500Z_20261124T101523Z.mp4")
    info = probe_video(mp4)
    assert (info.codec, info.frames, info.width, info.height, info.pix_fmt) == (
        "h264", 23, 160, 120, "yuv420p")
    assert json.loads(mp4.with_suffix(".json").read_text()) == video
    assert mp4.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8"
    # Purged before it was announced: the batch and its frames are gone.
    assert not bdir.exists()
    assert not list((root / "batches").rglob("*.jpg"))
    assert leftovers(root) == []
    names = [e["event"] for e in svc.events()]
    assert names.index("video_written") < names.index("batch_purged")
    # Retained: a late subscriber still gets the latest video of the device.
    late_name = f"operator-{uid()}"
    broker.add_service(late_name)
    late = Collector(broker.client(late_name, client_id=late_name))
    late.subscribe(f"cam/{d}/video")
    assert late.wait_for(lambda ms: len(ms) == 1, 10)
    assert late.messages[0].retain
    assert json.loads(late.messages[0].payload) == video
    late.client.disconnect()
    late.client.loop_stop()
    m = scrape(svc)
    assert m[("camstack_encoder_batches_total", (("outcome", "encoded"),))] == 1
    assert m[("camstack_encoder_frames_skipped_total", (("reason", "no_eoi"),))] == 1
    assert m[("camstack_encoder_frames_encoded_total", ())] == 23
    assert svc.stop() == 0
    statuses = [json.loads(msg.payload) for msg in operator.messages
                if msg.topic == f"svc/{enc.account}/status"]
    assert statuses[0]["state"] == "online"
    assert operator.wait_for(lambda ms: json.loads(ms[-1].payload) == {"state": "offline"}, 10)


def test_malformed_ready_events_are_acked_and_harmless(
        broker: BrokerHandle, tmp_path: Path, operator: Collector,
        announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("precious")
    enc = Encoder(broker, root, tmp_path)
    svc = enc.start()
    d = f"cam{uid()}"
    operator.subscribe(f"cam/{d}/video")
    good = write_batch(root, d, [make_jpeg(64, 48, i) for i in range(4)])
    bad: list[bytes] = [
        b"{not json",
        json.dumps([1, 2]).encode(),
        json.dumps({**good, "v": 7}).encode(),
        json.dumps({**good, "frames": "many"}).encode(),
        json.dumps({**good, "location": "../../etc"}).encode(),
        json.dumps({**good, "batch": "../../etc", "location": "batches/x/../../etc"}).encode(),
        json.dumps({**good, "batch": f"{d}-19700101T000000Z-0099",
                    "location": f"batches/{d}/{d}-19700101T000000Z-0099"}).encode(),
    ]
    for payload in bad:
        announce(announcer, d, payload)
    announce(announcer, d, good)
    assert operator.wait_for(lambda ms: bool(video_events(operator, d)), 30)
    events = svc.events()
    reasons = [e["reason"] for e in events if e["event"] == "ready_malformed"]
    assert reasons == ["bad_json", "not_object", "bad_version", "bad_field", "bad_location",
                       "bad_field"]
    assert [e["event"] for e in events].count("ready_batch_missing") == 1
    assert (outside / "passwd").read_text() == "precious"
    assert len(videos_of(root, d)) == 1
    m = scrape(svc)
    assert m[("camstack_encoder_ready_malformed_total", (("reason", "bad_field"),))] == 2
    assert m[("camstack_encoder_ready_malformed_total", (("reason", "missing_batch"),))] == 1
    assert svc.stop() == 0
    # Every one of them was acked: a restart with the same session gets none again. A
    # fresh event announced after the restart queues behind anything redelivered, so
    # once its video exists every redelivery would have been handled already.
    svc2 = enc.start()
    svc2.wait_event("encoder_ready", 30)
    later = write_batch(root, d, [make_jpeg(64, 48, i) for i in range(3)], counter=2)
    announce(announcer, d, later)
    assert operator.wait_for(lambda ms: len(video_events(operator, d)) == 2, 30)
    names = [e["event"] for e in svc2.events()]
    assert "ready_malformed" not in names and "ready_batch_missing" not in names
    assert svc2.stop() == 0


def test_batch_without_a_decodable_frame_is_quarantined(
        broker: BrokerHandle, tmp_path: Path, announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    enc = Encoder(broker, root, tmp_path)
    svc = enc.start()
    d = f"cam{uid()}"
    whole = make_jpeg(64, 48, 1)
    event = write_batch(root, d, [b"garbage", whole[:300], b"\xff\xd8\xff\xd9" * 3])
    announce(announcer, d, event)
    q = svc.wait_event("batch_quarantined", 30)
    assert q["reason"] == "no_decodable_frame"
    qdir = root / "quarantine" / d / event["batch"]
    reason = json.loads((qdir / "reason.json").read_text())
    assert reason["reason"] == "no_decodable_frame"
    assert reason["skipped"] == {"no_soi": 1, "no_eoi": 1, "decode_error": 1}
    assert len(list((qdir / "frames").iterdir())) == 3
    assert not (root / event["location"]).exists()
    assert videos_of(root, d) == []
    # Still alive and working.
    ok = write_batch(root, d, [make_jpeg(64, 48, i) for i in range(3)], counter=2)
    announce(announcer, d, ok)
    svc.wait_event("video_written", 30)
    assert svc.stop() == 0


def test_redelivered_ready_makes_no_second_video_and_finishes_the_purge(
        broker: BrokerHandle, tmp_path: Path, operator: Collector,
        announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    enc = Encoder(broker, root, tmp_path)
    svc = enc.start()
    d = f"cam{uid()}"
    operator.subscribe(f"cam/{d}/video")
    event = write_batch(root, d, [make_jpeg(96, 64, i) for i in range(8)])
    bdir = root / event["location"]
    copy = tmp_path / "copy"
    shutil.copytree(bdir, copy)
    announce(announcer, d, event)
    assert operator.wait_for(lambda ms: len(video_events(operator, d)) == 1, 30)
    first = videos_of(root, d)
    body = first[0].read_bytes()
    # 1. The same event again, batch gone: the video is announced again, not remade.
    announce(announcer, d, event)
    assert operator.wait_for(lambda ms: len(video_events(operator, d)) == 2, 30)
    # 2. As after a crash between the rename and the purge: batch back, event again.
    shutil.copytree(copy, bdir)
    announce(announcer, d, event)
    assert operator.wait_for(lambda ms: len(video_events(operator, d)) == 3, 30)
    assert not bdir.exists()
    assert videos_of(root, d) == first
    assert first[0].read_bytes() == body
    evs = video_events(operator, d)
    assert evs[0] == evs[1] == evs[2]
    names = [e["event"] for e in svc.events()]
    assert names.count("video_written") == 1
    assert names.count("video_already_written") == 2
    assert names.count("batch_purged") == 2
    assert svc.stop() == 0


def test_startup_picks_up_sealed_batches_and_crash_leftovers(
        broker: BrokerHandle, tmp_path: Path, operator: Collector) -> None:
    root = tmp_path / "store"
    d1, d2, d3, d5, d6, d7 = (f"cam{uid()}" for _ in range(6))
    for d in (d1, d2, d6):
        operator.subscribe(f"cam/{d}/video")
    # d1: sealed, never announced (no ready event at all).
    e1 = write_batch(root, d1, [make_jpeg(64, 48, i) for i in range(5)])
    # d2: a crash mid-encode left a partial MP4 and a sidecar but no video.
    e2 = write_batch(root, d2, [make_jpeg(64, 48, i) for i in range(5)])
    vdir = root / "videos" / d2 / "2026-11-24"
    vdir.mkdir(parents=True)
    stem = f"{d2}_20261124T101500Z_20261124T101504Z"
    (vdir / f".{stem}.mp4.partial").write_bytes(b"half an mp4")
    (vdir / f"{stem}.json").write_text(json.dumps({"batch": e2["batch"]}))
    # d3: an interrupted seal (no manifest): the ingestor's to roll back, not ours.
    e3 = write_batch(root, d3, [make_jpeg(64, 48, i) for i in range(3)])
    (root / e3["location"] / "manifest.json").unlink()
    # And a purge interrupted in the trash.
    trash = root / "state" / "encoder" / "trash" / "x--y--z"
    (trash / "frames").mkdir(parents=True)
    (trash / "frames" / "a.jpg").write_bytes(b"x")
    # d5: a batch that already failed (or killed the encoder) max_attempts times.
    e5 = write_batch(root, d5, [make_jpeg(64, 48, i) for i in range(2)])
    attempts = root / "state" / "encoder" / "attempts"
    attempts.mkdir(parents=True)
    (attempts / f"{d5}--{e5['batch']}").write_text("3")
    # d6: purged, but the process died before the broker acknowledged the announcement.
    b6 = f"{d6}-20261124T101500Z-0001"
    vdir6 = root / "videos" / d6 / "2026-11-24"
    vdir6.mkdir(parents=True)
    mp4_6 = vdir6 / f"{d6}_20261124T101500Z_20261124T101501Z.mp4"
    res = encode_video([FrameInput(ts_ms=i, data=make_jpeg(64, 48, i)) for i in range(2)],
                       mp4_6, EncodeOptions(preset="ultrafast"))
    ev6 = VideoEvent(device=d6, batch=b6, location=mp4_6.relative_to(root).as_posix(),
                     frames=res.frames_written, frames_skipped=0, duration_s=2 / 30,
                     size=mp4_6.stat().st_size, first_capture_ms=T0,
                     last_capture_ms=T0 + 1000).to_obj()
    mp4_6.with_suffix(".json").write_text(json.dumps(ev6))
    notes = root / "state" / "encoder" / "unannounced"
    notes.mkdir(parents=True)
    (notes / f"{d6}--{b6}.json").write_text(json.dumps(
        {"device": d6, "batch": b6, "video": ev6["location"]}))
    # d7: a video from 2020, past the retention age.
    old = root / "videos" / d7 / "2020-01-01" / f"{d7}_20200101T000000Z_20200101T000100Z.mp4"
    old.parent.mkdir(parents=True)
    shutil.copy(mp4_6, old)
    old.with_suffix(".json").write_text(json.dumps(
        {**ev6, "device": d7, "first_capture_ms": 1577836800000,
         "last_capture_ms": 1577836860000}))
    enc = Encoder(broker, root, tmp_path, work={"max_attempts": 3},
                  retention={"max_age_days": 30, "interval_s": 0.5})
    svc = enc.start()
    assert operator.wait_for(lambda ms: bool(video_events(operator, d1))
                             and bool(video_events(operator, d2))
                             and bool(video_events(operator, d6)), 30)
    assert video_events(operator, d6) == [ev6]
    svc.wait_event(lambda e: e["event"] == "video_announced_late" and e["device"] == d6)
    # Notes are cleared once the PUBACK is in, a moment after subscribers see the event.
    deadline = time.monotonic() + 10
    while list(notes.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(notes.iterdir())
    q = svc.wait_event(lambda e: e["event"] == "batch_quarantined" and e["device"] == d5)
    assert (q["reason"], q["attempts"]) == ("too_many_attempts", 3)
    assert (root / "quarantine" / d5 / e5["batch"] / "reason.json").is_file()
    assert not (attempts / f"{d5}--{e5['batch']}").exists()
    gone = svc.wait_event("video_deleted", 10)
    assert (gone["rule"], gone["video"]) == ("max_age", old.relative_to(root).as_posix())
    assert not old.exists() and not old.with_suffix(".json").exists()
    assert mp4_6.exists()
    for d, e in ((d1, e1), (d2, e2)):
        (mp4,) = videos_of(root, d)
        assert probe_video(mp4).frames == 5
        assert not (root / e["location"]).exists()
    assert videos_of(root, d2)[0].name == f"{stem}.mp4"
    assert leftovers(root) == []
    assert (root / e3["location"] / "frames").is_dir()
    assert videos_of(root, d3) == []
    assert not trash.exists()
    assert svc.stop() == 0


def test_sigkill_during_encoding_then_restart_gives_exactly_one_video(
        broker: BrokerHandle, tmp_path: Path, operator: Collector,
        announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    # Slow settings so the kill lands inside the encode: one decoder, a slow preset.
    enc = Encoder(broker, root, tmp_path, encode={"preset": "slow", "decode_threads": 1})
    svc = enc.start()
    d = f"cam{uid()}"
    operator.subscribe(f"cam/{d}/video")
    distinct = [make_jpeg(800, 600, i, quality=80) for i in range(6)]
    event = write_batch(root, d, [distinct[i % 6] for i in range(120)])
    bdir = root / event["location"]
    announce(announcer, d, event)
    svc.wait_event("encode_started", 30)
    svc.kill()
    assert bdir.is_dir() and len(list((bdir / "frames").iterdir())) == 120
    assert videos_of(root, d) == []
    assert video_events(operator, d) == []
    svc2 = enc.start()
    assert operator.wait_for(lambda ms: bool(video_events(operator, d)), 120)
    (mp4,) = videos_of(root, d)
    info = probe_video(mp4)
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 120, 800, 600)
    assert not bdir.exists()
    assert not list((root / "batches").rglob("*.jpg"))
    assert leftovers(root) == []
    started = [e for e in svc2.events() if e["event"] == "encode_started"]
    assert [e["attempt"] for e in started] == [2]  # the attempt counter survived the kill
    # The killed run never acked, so the broker re-delivers the event to the restarted
    # session: it either finds the batch and encodes it, or (when the start-up scan got
    # there first) finds the video and announces it again. One video either way.
    svc2.wait_event(lambda e: (e["event"] == "encode_started" and e["source"] == "ready")
                    or e["event"] == "video_already_written", 30)
    evs = video_events(operator, d)
    assert 1 <= len(evs) <= 2
    assert all(e == evs[0] for e in evs)
    assert evs[0]["frames"] == 120
    assert len(videos_of(root, d)) == 1
    assert svc2.stop() == 0


def test_two_encoders_split_the_work(broker: BrokerHandle, tmp_path: Path,
                                     operator: Collector, announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    group = f"enc-{uid()}"
    a = Encoder(broker, root, tmp_path, group=group)
    b = Encoder(broker, root, tmp_path, group=group)
    sa, sb = a.start(), b.start()
    devices = [f"cam{uid()}" for _ in range(4)]
    for d in devices:
        operator.subscribe(f"cam/{d}/video")
    for d in devices:
        announce(announcer, d, write_batch(root, d, [make_jpeg(64, 48, i) for i in range(4)]))
    assert operator.wait_for(lambda ms: all(video_events(operator, d) for d in devices), 60)
    wa = [e["device"] for e in sa.events() if e["event"] == "video_written"]
    wb = [e["device"] for e in sb.events() if e["event"] == "video_written"]
    assert wa and wb, (wa, wb)
    assert sorted(wa + wb) == sorted(devices)
    for d in devices:
        assert len(videos_of(root, d)) == 1
    assert sa.stop() == 0
    assert sb.stop() == 0


def test_sigterm_mid_encode_stops_cleanly_and_leaves_the_batch(
        broker: BrokerHandle, tmp_path: Path, operator: Collector,
        announcer: mqtt.Client) -> None:
    root = tmp_path / "store"
    enc = Encoder(broker, root, tmp_path, encode={"preset": "slow", "decode_threads": 1})
    svc = enc.start()
    d = f"cam{uid()}"
    operator.subscribe(f"cam/{d}/video")
    operator.subscribe(f"svc/{enc.account}/status")
    distinct = [make_jpeg(800, 600, i, quality=80) for i in range(4)]
    event = write_batch(root, d, [distinct[i % 4] for i in range(120)])
    announce(announcer, d, event)
    svc.wait_event("encode_started", 30)
    assert svc.stop() == 0
    names = [e["event"] for e in svc.events()]
    assert "encode_cancelled" in names and "video_written" not in names
    assert (root / event["location"] / "manifest.json").is_file()
    assert leftovers(root) == [] and videos_of(root, d) == []
    assert not list((root / "state" / "encoder" / "attempts").iterdir())
    assert operator.wait_for(
        lambda ms: any(m.topic.startswith("svc/") and json.loads(m.payload) == {"state": "offline"}
                       for m in ms), 10)
    # A shutdown is not a failed attempt: the restart (re-delivered event or start-up
    # scan) encodes it as attempt 1.
    svc2 = enc.start()
    assert operator.wait_for(lambda ms: bool(video_events(operator, d)), 60)
    started = [e for e in svc2.events() if e["event"] == "encode_started"]
    assert [e["attempt"] for e in started] == [1]
    assert len(videos_of(root, d)) == 1
    assert svc2.stop() == 0
