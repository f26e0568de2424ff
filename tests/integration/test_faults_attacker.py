"""What one device holding a valid account can do to everyone else (docs/security.md).

Regression tests of the attacks in the security review, each against the real broker and
the real services, while honest cameras stream:

* a frame whose capture time is absurd (``2^64-1`` with the clock flag, or times that
  made 14-digit file names) stopped the ingestor for good, and frames with such names
  were never sealed after a restart;
* a retained status with a 400-digit number crashed the monitor and ``status``, and
  terminal escape codes in a status reached the operator's screen;
* a subscriber that takes ready events and drops them left batches without a video
  until the ingestor restarted;
* hypothesis drives every chunk-header field and every status field through the real
  ingestor and monitor at extreme and random values.
"""

from __future__ import annotations

import json
import stat
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camstack.brokerproc import BrokerHandle
from camstack.procs import ServiceProcess, scrape, service_config
from config.loader import to_toml
from config.settings import MonitorSettings, StorageSettings
from contract.codec import FLAG_CLOCK_SYNCED, HEADER, MAGIC, VERSION, split_frame
from contract.layout import CAPTURE_MIN_MS
from monitor.service import status_report
from tests.support.faults import (
    audit,
    frame_files,
    settled,
    start_scenario,
    video_locations,
    wait_until,
)
from tests.support.fleet import marker_jpeg

pytestmark = pytest.mark.integration


def _publish_frame(client: Any, topic: str, jpeg: bytes, **fields: Any) -> None:
    for payload in split_frame(jpeg, **fields):
        client.publish(topic, payload, qos=1).wait_for_publish(30)


def test_absurd_capture_times_never_stop_ingestion_and_seal_after_restart(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    root = tmp_path / "store"
    sc = start_scenario(broker, tmp_path, root, cleanup, letter="t", cameras=2, fps=8,
                        ingest={"frames_per_video": 20, "idle_seal_s": 1.0})
    wait_until(lambda: bool(video_locations(root)), 30, "a first video")
    attacker = f"x{sc.tag}"
    pw = broker.store.add(attacker, "device")
    broker.reload()
    bad = broker.client(attacker, pw, client_id=attacker)
    now = int(time.time() * 1000)
    untrusted = [2**64 - 1, 2**63, 10**13, 10**13 + 1, 2 * 10**14, 25 * 10**13 - 1,
                 1, CAPTURE_MIN_MS - 1, now + 2 * 86_400_000]
    times = [*untrusted, now - 3_600_000]  # the last one is plausible and kept
    # The first one alone stopped every camera's ingestion before the fix.
    for seq, t in enumerate(times):
        _publish_frame(bad, f"cam/{attacker}/frame", marker_jpeg(200, seq), boot_id=1,
                       frame_seq=seq, capture_ms=t, clock_synced=True)
    ingestor = sc.stack.current["ingestor"]
    assert ingestor is not None

    def stored() -> int:
        return len([e for e in sc.stack.events("ingestor")
                    if e.get("event") == "frame_stored" and e.get("device") == attacker])

    wait_until(lambda: stored() == len(times), 30, "every attacker frame stored")
    untrusted_events = [e for e in sc.stack.events("ingestor")
                        if e.get("event") == "capture_time_untrusted"]
    assert len(untrusted_events) == len(untrusted)
    # A crash right now: the restarted ingestor must index and seal what is on disk.
    sc.stack.kill("ingestor")
    sc.stack.start("ingestor")
    bad.disconnect()
    bad.loop_stop()
    unacked = sc.fleet.finish(30)
    assert sc.fleet.errors() == {} and unacked == 0
    wait_until(lambda: settled(root), 90, "every frame sealed and encoded")
    assert sc.stack.alive("ingestor") and sc.stack.alive("encoder")
    assert [len(v) for v in sc.stack.history.values()] == [2, 1], "a service restarted"
    assert sc.stack.stop_all() == {"encoder": 0, "ingestor": 0}
    result = audit(root, sc.fleet, ignore_devices={attacker})
    assert result.problems() == [] and result.acked == result.sent
    # Frames and videos are not for every local user.
    videos = list((root / "videos").rglob("*.mp4"))
    assert any(attacker in p.name for p in videos), "the attacker's frames made no video"
    for p in videos:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
        assert stat.S_IMODE(p.parent.stat().st_mode) == 0o750, p.parent


def _monitor(broker: BrokerHandle, tmp_path: Path, root: Path, account: str) -> ServiceProcess:
    broker.add_service(account)
    cfg = tmp_path / "monitor.toml"
    service_config(broker, account, root, cfg)
    data = tomllib.loads(cfg.read_text())
    data["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    data["interval_s"] = 0.3
    data["alerts"] = {"device_offline_s": 0.5, "no_frame_s": 0.5, "service_offline_s": 3600,
                      "disk_percent": 100}
    cfg.write_text(to_toml(data))
    return ServiceProcess("monitor", cfg, tmp_path / "monitor.log").start()


POISON_STATUSES = [
    b'{"state":"online","interval_ms":1' + b"0" * 400 + b"}",
    b'{"state":"online","interval_ms":1e308,"heap_free":-1' + b"9" * 300 + b"}",
    b'{"state":"online","fw":"\\u001b[2J\\u001b[H\\nALL CAMERAS OK\\r","rssi":"\\u202e9-"}',
]


def test_poisoned_statuses_stop_neither_monitor_nor_status(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    root = tmp_path / "store"
    (root / "frames").mkdir(parents=True)  # storage reachable: the no-frame rule runs
    tag = str(int(time.time() * 1000) % 100_000)
    attackers = [f"p{tag}{i}" for i in range(len(POISON_STATUSES))]
    honest = f"h{tag}"
    pws = {d: broker.store.add(d, "device") for d in [*attackers, honest]}
    broker.reload()
    for dev, payload in zip(attackers, POISON_STATUSES, strict=True):
        c = broker.client(dev, pws[dev], client_id=dev)
        c.publish(f"cam/{dev}/status", payload, qos=1, retain=True).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
    mon = _monitor(broker, tmp_path, root, f"operator-m{tag}")
    cleanup.append(mon)
    # Every poisoned status is evaluated by the no-frame rule; the monitor survives it
    # and goes on to judge a device that reports after them.
    for dev in attackers[:2]:
        mon.wait_event(lambda e, d=dev: e.get("event") == "alert_raised"  # type: ignore
                       and e.get("rule") == "no_frame" and e.get("subject") == d, 30)
    c = broker.client(honest, pws[honest], client_id=honest)
    c.publish(f"cam/{honest}/status", b'{"state":"offline"}', qos=1,
              retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    mon.wait_event(lambda e: e.get("event") == "alert_raised"
                   and e.get("rule") == "device_offline" and e.get("subject") == honest, 30)
    assert mon.proc is not None and mon.proc.poll() is None
    reporter = f"operator-r{tag}"
    broker.add_service(reporter)
    report = status_report(MonitorSettings(mqtt=broker.mqtt_settings(reporter),
                                           storage=StorageSettings(root=root)),
                           account=reporter)
    assert all(d in report for d in [*attackers, honest])
    assert "\x1b" not in report and "\r" not in report and "\u202e" not in report
    # The fake line is shown as data inside its cell, never as a line of its own.
    assert not any(line.strip().startswith("ALL CAMERAS OK") for line in report.splitlines())
    assert mon.stop(10) == 0


def test_swallowed_ready_events_are_announced_again_until_the_video_exists(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    root = tmp_path / "store"
    sc = start_scenario(broker, tmp_path, root, cleanup, letter="s", cameras=2, fps=10,
                        ingest={"frames_per_video": 10, "idle_seal_s": 1.0,
                                "reannounce_s": 1.0, "reannounce_max_s": 2.0},
                        work={"rescan_interval_s": 0})
    # A member of the encoders' share group that takes ready events and drops them (a
    # broken worker, or any account allowed to join the group). Round robin hands it
    # about half of the events; only the re-announce gets those batches encoded.
    thief_name = f"encoder-t{sc.tag}"
    broker.add_service(thief_name)
    swallowed: list[str] = []
    thief = broker.client(thief_name, client_id=thief_name)
    thief.on_message = lambda _c, _u, m: swallowed.append(m.topic)
    thief.subscribe(f"$share/enc-{sc.tag}/cam/+/ready", qos=1)
    wait_until(lambda: len(swallowed) >= 3, 60, "ready events swallowed")
    unacked = sc.fleet.finish(30)
    assert sc.fleet.errors() == {} and unacked == 0
    wait_until(lambda: settled(root), 120, "every batch encoded despite the thief")
    thief.disconnect()
    thief.loop_stop()
    ingestor = sc.stack.current["ingestor"]
    assert ingestor is not None
    again = scrape(ingestor)[("camstack_ingestor_batches_reannounced_total", ())]
    assert again >= 1
    assert [len(v) for v in sc.stack.history.values()] == [1, 1]
    assert sc.stack.stop_all() == {"encoder": 0, "ingestor": 0}
    result = audit(root, sc.fleet)
    assert result.problems() == [] and result.acked == result.sent


# --------------------------------------------------------------------------- hypothesis
U8 = st.one_of(st.sampled_from([0, 1, 2, 0x7F, 0xFF]), st.integers(0, 0xFF))
U16 = st.one_of(st.sampled_from([0, 1, 2, 0xFFFE, 0xFFFF]), st.integers(0, 0xFFFF))
U32 = st.one_of(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
U64 = st.one_of(st.sampled_from([0, 1, 10**13, 25 * 10**13, 2**63, 2**64 - 1]),
                st.integers(0, 2**64 - 1))
JSON_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([10**400, -(10**400)]))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), JSON_NUMBERS, st.text(max_size=50)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10)
STATUS_KEYS = ["state", "interval_ms", "heap_free", "rssi", "queue", "frames_sent", "fw",
               "uptime_s", "boot_id", "reset_reason"]


@st.composite
def chunk_payloads(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(min_size=0, max_size=64))
    jpeg = b"\xff\xd8" + data + b"\xff\xd9"
    frame_len = draw(st.one_of(st.just(len(jpeg)), U32))
    crc = draw(st.one_of(st.just(0), U32))
    flags = draw(st.one_of(st.just(FLAG_CLOCK_SYNCED), U8))
    header = HEADER.pack(MAGIC, draw(st.one_of(st.just(VERSION), U8)), flags, draw(U32),
                         draw(U32), draw(U16), draw(U16), frame_len, crc, draw(U32), draw(U64))
    return header + jpeg


def _status_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def test_hypothesis_extreme_fields_through_the_real_services(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    root = tmp_path / "store"
    sc = start_scenario(broker, tmp_path, root, cleanup, letter="y", cameras=1, fps=8,
                        ingest={"frames_per_video": 20, "idle_seal_s": 1.0,
                                "partial_timeout_s": 2})
    root.mkdir(exist_ok=True)
    mon = _monitor(broker, tmp_path, root, f"operator-y{sc.tag}")
    cleanup.append(mon)
    mon.wait_event("monitor_ready", 30)
    attacker = f"z{sc.tag}"
    pw = broker.store.add(attacker, "device")
    broker.reload()
    bad = broker.client(attacker, pw, client_id=attacker)
    frame_topic, status_topic = f"cam/{attacker}/frame", f"cam/{attacker}/status"
    sent = [0]

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(chunks=st.lists(chunk_payloads(), min_size=1, max_size=4),
           status=st.dictionaries(st.sampled_from(STATUS_KEYS), JSON_VALUES, max_size=6),
           retain_frame=st.booleans())
    def attack(chunks: list[bytes], status: dict[str, Any], retain_frame: bool) -> None:
        for payload in chunks:
            bad.publish(frame_topic, payload, qos=1, retain=retain_frame)
            sent[0] += 1
        bad.publish(status_topic, _status_json(status), qos=1, retain=True)
        # A valid frame with an extreme capture time, too.
        sent[0] += 1
        bad.publish(frame_topic, split_frame(marker_jpeg(201, sent[0] % 1000), boot_id=2,
                                             frame_seq=sent[0], capture_ms=2**64 - sent[0],
                                             clock_synced=True, chunk_data=1 << 20)[0], qos=1)

    attack()
    bad.publish(status_topic, b'{"state":"online"}', qos=1, retain=True)
    bad.publish(frame_topic, b"", qos=1, retain=True)  # no retained frame stays behind
    # One last valid frame: once it is stored, everything before it was handled (one
    # client's QoS 1 messages arrive in order) and nothing crashed on the way.
    last_seq = 10**6
    _publish_frame(bad, frame_topic, marker_jpeg(202, 0), boot_id=3, frame_seq=last_seq)
    bad.disconnect()
    bad.loop_stop()
    ingestor = sc.stack.current["ingestor"]
    assert ingestor is not None
    ingestor.wait_event(lambda e: e.get("event") == "frame_stored"
                        and e.get("device") == attacker and e.get("seq") == last_seq, 60)
    unacked = sc.fleet.finish(30)
    assert sc.fleet.errors() == {} and unacked == 0
    wait_until(lambda: scrape(ingestor)[("camstack_ingestor_unacked_chunks", ())] == 0, 30,
               "no chunk left unacknowledged")
    wait_until(lambda: not [p for p in frame_files(root) if attacker not in str(p)], 90,
               "every honest frame sealed")
    wait_until(lambda: not any((root / "batches").glob("y*/*")), 90, "honest batches encoded")
    assert mon.proc is not None and mon.proc.poll() is None, "the monitor died"
    assert sc.stack.alive("ingestor") and sc.stack.alive("encoder")
    assert [len(v) for v in sc.stack.history.values()] == [1, 1], "a service restarted"
    assert sc.stack.stop_all() == {"encoder": 0, "ingestor": 0}
    result = audit(root, sc.fleet, ignore_devices={attacker})
    assert result.problems() == [] and result.acked == result.sent
    assert mon.stop(10) == 0
