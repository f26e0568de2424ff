"""Alert rules, the health model and the status table (pure)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from config.settings import AlertSettings
from contract.events import safe_text
from monitor.health import (
    RULE_BROKER_DROPPING,
    RULE_DEVICE_OFFLINE,
    RULE_DEVICE_THROTTLED,
    RULE_DISK_FULL,
    RULE_NO_FRAME,
    RULE_REJECTION_RATE,
    RULE_SERVICE_OFFLINE,
    SYS_DROPPED_TOPIC,
    SYS_GUARD_KICKED_PREFIX,
    Alert,
    AlertBook,
    DiskUsage,
    HealthModel,
    alert_topic,
    device_health,
    evaluate,
    format_duration,
    format_status,
    service_counters,
)

T0 = 1_795_515_300_000
RULES = AlertSettings(device_offline_s=300, no_frame_s=600, rejection_rate=0.05,
                      rejection_min_frames=50, disk_percent=90, service_offline_s=60)


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _rules(alerts: list[Alert]) -> set[tuple[str, str]]:
    return {(a.rule, a.subject) for a in alerts}


def test_device_offline_fires_only_after_threshold() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/c1/status", _j({"state": "online"}), T0)
    m.apply("cam/c1/status", _j({"state": "offline"}), T0 + 1000)
    assert evaluate(m, RULES, T0 + 1000 + 299_000) == []
    alerts = evaluate(m, RULES, T0 + 1000 + 300_000)
    assert _rules(alerts) == {(RULE_DEVICE_OFFLINE, "c1")}
    assert alerts[0].value == 300.0 and alerts[0].threshold == 300


def test_retained_offline_counts_from_observer_start() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/c1/status", _j({"state": "offline"}), T0 + 5, retained=True)
    assert m.devices["c1"].since_ms is None
    assert evaluate(m, RULES, T0 + 299_999) == []
    assert _rules(evaluate(m, RULES, T0 + 300_000)) == {(RULE_DEVICE_OFFLINE, "c1")}


def test_same_state_again_keeps_its_start() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/c1/status", _j({"state": "online", "rssi": -60}), T0)
    m.apply("cam/c1/status", _j({"state": "online", "rssi": -70}), T0 + 9000)
    assert m.devices["c1"].since_ms == T0
    assert m.devices["c1"].status["rssi"] == -70


def test_no_frame_counts_from_last_frame_or_coming_online() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/c1/status", _j({"state": "online"}), T0)
    # Without storage or frame topics nothing says whether frames arrive: no alert.
    assert evaluate(m, RULES, T0 + 10_000_000) == []
    m.frames_observable = True
    assert _rules(evaluate(m, RULES, T0 + 600_000)) == {(RULE_NO_FRAME, "c1")}
    m.note_frame("c1", T0 + 500_000)
    assert evaluate(m, RULES, T0 + 600_000) == []
    m.note_frame("c1", T0 + 100)  # older: ignored
    assert m.devices["c1"].last_frame_ms == T0 + 500_000
    assert _rules(evaluate(m, RULES, T0 + 1_100_000)) == {(RULE_NO_FRAME, "c1")}


def test_frame_topic_counts_as_a_frame() -> None:
    m = HealthModel(prefix="site1", started_ms=T0)
    assert m.apply("site1/c1/frame", b"\x00" * 40, T0 + 42)
    assert m.devices["c1"].last_frame_ms == T0 + 42 and m.frames_observable
    assert not m.apply("cam/c1/frame", b"", T0)  # other prefix: not ours


def test_slow_timelapse_device_is_not_silent_too_early() -> None:
    m = HealthModel(started_ms=T0)
    m.frames_observable = True
    m.apply("cam/c1/status", _j({"state": "online", "interval_ms": 600_000}), T0)
    m.note_frame("c1", T0)
    assert evaluate(m, RULES, T0 + 1_000_000) == []
    alerts = evaluate(m, RULES, T0 + 1_800_000)
    assert _rules(alerts) == {(RULE_NO_FRAME, "c1")} and alerts[0].threshold == 1800


def test_service_offline_is_critical() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("svc/ingestor/status", _j({"state": "online"}), T0)
    m.apply("svc/ingestor/status", _j({"state": "offline"}), T0 + 10)
    assert evaluate(m, RULES, T0 + 59_000) == []
    alerts = evaluate(m, RULES, T0 + 70_000)
    assert _rules(alerts) == {(RULE_SERVICE_OFFLINE, "ingestor")}
    assert alerts[0].severity == "critical"
    m.apply("svc/ingestor/status", _j({"state": "degraded"}), T0 + 80_000)
    alerts = evaluate(m, RULES, T0 + 140_000)
    assert _rules(alerts) == {(RULE_SERVICE_OFFLINE, "ingestor")}
    assert "degraded" in alerts[0].message


def test_rejection_rate_needs_enough_frames_and_uses_the_window() -> None:
    m = HealthModel(started_ms=T0, rate_window_ms=60_000)
    m.apply("svc/ingestor/status", _j({"state": "online", "frames_stored": 1000,
                                        "frames_rejected": 10}), T0)
    m.apply("svc/ingestor/status", _j({"state": "online", "frames_stored": 1020,
                                        "frames_rejected": 20}), T0 + 10_000)
    assert evaluate(m, RULES, T0 + 10_000) == []  # 30 frames < 50: too few to judge
    m.apply("svc/ingestor/status", _j({"state": "online", "frames_stored": 1060,
                                        "frames_rejected": 30}), T0 + 20_000)
    alerts = evaluate(m, RULES, T0 + 20_000)
    assert _rules(alerts) == {(RULE_REJECTION_RATE, "ingestor")}
    assert alerts[0].value == round(20 / 80, 4)
    # Clean traffic for longer than the window: the old rejections age out.
    for i in range(1, 10):
        m.apply("svc/ingestor/status", _j({"state": "online", "frames_stored": 1060 + 100 * i,
                                            "frames_rejected": 30}), T0 + 20_000 + 30_000 * i)
    assert evaluate(m, RULES, T0 + 300_000) == []


def test_rejection_counters_reset_on_service_restart() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("svc/ingestor/status", _j({"frames_stored": 5000, "frames_rejected": 0}), T0)
    m.apply("svc/ingestor/status", _j({"frames_stored": 10, "frames_rejected": 10}), T0 + 1)
    m.apply("svc/ingestor/status", _j({"frames_stored": 60, "frames_rejected": 10}), T0 + 2)
    rate, total = m.rates["ingestor"].rate()
    assert (rate, total) == (0.0, 50)


def test_service_counters_accept_rejections_by_reason() -> None:
    assert service_counters({"frames_stored": 7, "frames_rejected": {"crc_mismatch": 2,
                                                                      "not_jpeg": 1}}) == (7, 3)
    assert service_counters({"frames_stored": 7, "rejected": 4}) == (7, 4)
    assert service_counters({"state": "online"}) is None


def test_disk_full() -> None:
    m = HealthModel(started_ms=T0)
    m.disk = DiskUsage("/data", total_bytes=100, used_bytes=89, free_bytes=11)
    assert evaluate(m, RULES, T0) == []
    m.disk = DiskUsage("/data", total_bytes=100, used_bytes=91, free_bytes=9)
    alerts = evaluate(m, RULES, T0)
    assert _rules(alerts) == {(RULE_DISK_FULL, "storage")}
    assert "91.0%" in alerts[0].message


def test_garbage_payloads_do_not_crash() -> None:
    m = HealthModel(started_ms=T0)
    assert m.apply("cam/c1/status", b"\xff\xfe not json", T0)
    assert m.apply("cam/c1/status", b"[1, 2]", T0)
    assert m.apply("cam/c1/video", b"{", T0)
    assert m.apply("svc/x/status", _j({"state": 5}), T0)
    assert not m.apply("cam/c1/status/extra", b"{}", T0)
    assert m.devices["c1"].state == "unknown" and m.services["x"].state == "unknown"
    evaluate(m, RULES, T0 + 10**9)


def test_alert_book_raises_once_keeps_start_and_clears() -> None:
    book = AlertBook()
    a = Alert(RULE_DEVICE_OFFLINE, "c1", "gone", 300.0, 300.0)
    ch = book.update([a], T0)
    assert [x.since_ms for x in ch.raised] == [T0] and ch.cleared == []
    ch = book.update([a], T0 + 15_000)
    assert ch.raised == [] and ch.cleared == []
    assert book.active[(RULE_DEVICE_OFFLINE, "c1")].since_ms == T0
    ch = book.update([], T0 + 30_000)
    assert [x.subject for x in ch.cleared] == ["c1"] and book.active == {}


def test_alert_book_adopts_retained_alerts_from_an_earlier_run() -> None:
    book = AlertBook()
    old = Alert(RULE_DISK_FULL, "storage", "full", 95.0, 90.0, since_ms=T0 - 5000)
    book.adopt(RULE_DISK_FULL, "storage", _j(old.payload()))
    book.adopt(RULE_DEVICE_OFFLINE, "c9", _j({"since_ms": T0 - 1}))
    book.adopt(RULE_DEVICE_OFFLINE, "c8", _j({"since_ms": T0 - 1}))
    book.adopt(RULE_DEVICE_OFFLINE, "c8", b"")  # cleared meanwhile
    still = Alert(RULE_DISK_FULL, "storage", "full", 96.0, 90.0)
    ch = book.update([still], T0)
    # Re-published once with fresh values and the original start; the stale one cleared.
    assert [(x.rule, x.since_ms, x.value) for x in ch.raised] == [(RULE_DISK_FULL, T0 - 5000,
                                                                    96.0)]
    assert [(x.rule, x.subject) for x in ch.cleared] == [(RULE_DEVICE_OFFLINE, "c9")]
    assert book.update([still], T0 + 1).raised == []


@given(st.lists(st.sets(st.sampled_from(["a", "b", "c", "d"])), max_size=20))
def test_published_alerts_always_mirror_the_firing_set(rounds: list[set[str]]) -> None:
    book = AlertBook()
    retained: dict[str, str] = {}
    for i, firing in enumerate(rounds):
        ch = book.update([Alert(RULE_NO_FRAME, s, s, 1.0, 1.0) for s in sorted(firing)], i)
        for a in ch.raised:
            assert a.subject not in retained
            retained[a.subject] = alert_topic("alerts", a.rule, a.subject)
        for a in ch.cleared:
            del retained[a.subject]
        assert set(retained) == firing


def test_status_table_lists_devices_services_storage_and_alerts() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/c1/status", _j({"state": "online", "rssi": -61, "heap_free": 123456,
                                  "queue": 2}), T0)
    m.note_storage("c1", last_frame_ms=T0 + 58_000, frames_today=118)
    m.apply("cam/c1/video", _j({"location": "videos/c1/2026-11-24/c1_a_b.mp4", "frames": 60,
                                 "last_capture_ms": T0}), T0)
    m.apply("cam/c2/status", _j({"state": "offline"}), T0, retained=True)
    m.apply("svc/encoder/status", _j({"state": "online", "videos": 3}), T0)
    m.disk = DiskUsage("/srv/data", 1000, 400, 600)
    alerts = evaluate(m, RULES, T0 + 3_600_000)
    text = format_status(m, T0 + 60_000, alerts)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("c1 "))
    for cell in ("online", "-61", "120.6 KiB", "2s ago", "118", "c1_a_b.mp4 (60 fr, 1m00s ago)"):
        assert cell in row, cell
    assert next(line for line in lines if line.startswith("c2 ")).split()[1] == "offline"
    assert any(line.startswith("encoder") and "videos=3" in line for line in lines)
    assert "storage /srv/data: 40.0% used" in text
    assert f"{len(alerts)} alert(s):" in text and "device_offline/c2" in text


def test_empty_status_says_so() -> None:
    text = format_status(HealthModel(started_ms=T0), T0)
    assert "no device has reported yet" in text and "not reachable" in text


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.9, 89, 120, 3720, 7200, 3 * 86400 + 4 * 3600,
                                         -5, 10**30)] == [
        "0s", "59s", "1m29s", "2m00s", "1h02m", "2h00m", "3d04h", "0s",
        f"{10**30 // 86400}d{10**30 % 86400 // 3600:02d}h"]


def test_service_for_column_and_complete_sorted_details() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("svc/ingestor/status", _j({"state": "online", "zeta": 1, "alpha": "x" * 30,
                                        "frames_stored": 123456789, "rejected": 5,
                                        "pending_frames": 0, "unacked_chunks": 0,
                                        "storage_ok": True, "ts_ms": T0}), T0, retained=True)
    m.apply("svc/encoder/status", _j({"state": "online"}), T0 + 1000)
    m.apply("svc/encoder/status", _j({"state": "offline"}), T0 + 2000)
    text = format_status(m, T0 + 3_722_000)
    lines = text.splitlines()
    ing = lines.index(next(line for line in lines if line.startswith("ingestor ")))
    assert lines[ing].split()[2] == "\u22651h02m"          # retained: since observation began
    assert next(line for line in lines if line.startswith("encoder ")).split()[1:3] == [
        "offline", "1h02m"]
    # Every pair is there, whole, in key order, wrapped between pairs only.
    details = " ".join(line[line.index("alpha="):] if "alpha=" in line else line.strip()
                       for line in lines[ing:ing + 4] if line.strip())
    pairs = [p.strip() for p in details.split(",")]
    keys = [p.split("=")[0] for p in pairs if "=" in p]
    assert keys[:5] == ["alpha", "frames_stored", "pending_frames", "rejected", "storage_ok"]
    assert "alpha=" + "x" * 30 in pairs and "zeta=1" in details
    assert "since the start of observation" in text


def test_status_lists_given_alerts_with_their_age_and_source_note() -> None:
    m = HealthModel(started_ms=T0)
    m.apply_alert("disk_full", "storage", _j({"rule": "disk_full", "subject": "storage",
                                              "severity": "critical", "message": "full",
                                              "value": 95, "threshold": 90,
                                              "since_ms": T0}))
    assert m.apply_alert("no_frame", "c1", _j({"message": "quiet", "since_ms": T0}))
    assert m.apply_alert("no_frame", "c1", b"")  # cleared
    assert not m.apply_alert("no frame", "c1", b"{}")
    text = format_status(m, T0 + 3_720_000, list(m.published.values()),
                         alerts_note="alerts as published by the monitor")
    assert "alerts as published by the monitor\n1 alert(s):" in text
    assert "[critical] disk_full/storage for 1h02m: full" in text


JSON_ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
              st.sampled_from([10**400, -(10**300)])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.sampled_from(["state", "interval_ms", "heap_free", "rssi", "queue",
                                        "fw", "frames_stored", "rejected", "x\x1b"]),
                       JSON_ANY, max_size=8),
       st.sampled_from(["cam", "svc"]))
def test_any_status_is_survived_by_rules_and_table(status: dict[str, object], kind: str) -> None:
    # Found in the security review: a 400-digit interval_ms raised OverflowError in the
    # no-frame rule on every start (it is retained); escape codes reached the terminal.
    m = HealthModel(started_ms=T0)
    m.frames_observable = True
    raw = json.dumps(status, allow_nan=True).encode()
    assert m.apply(f"{kind}/dev1/status", raw, T0)
    for later in (0, 10**6, 10**9):
        evaluate(m, RULES, T0 + later)
    text = format_status(m, T0 + 10**6, evaluate(m, RULES, T0 + 10**6))
    assert "\x1b" not in text and "\r" not in text
    assert all(line.isprintable() for line in text.splitlines())


def test_huge_numbers_are_dropped_where_they_enter() -> None:
    m = HealthModel(started_ms=T0)
    m.frames_observable = True
    m.apply("cam/c1/status", b'{"state":"online","interval_ms":1' + b"0" * 400 + b"}", T0)
    assert m.devices["c1"].status == {"state": "online"}
    # The default limit applies: no crash, and the device is judged like any other.
    assert _rules(evaluate(m, RULES, T0 + 600_000)) == {(RULE_NO_FRAME, "c1")}


def test_ids_outside_the_account_rules_are_nobodys_status() -> None:
    m = HealthModel(started_ms=T0)
    assert not m.apply("cam/a\x1bb/status", b'{"state":"online"}', T0)
    assert not m.apply("svc/" + "x" * 40 + "/status", b'{"state":"online"}', T0)
    assert m.devices == {} and m.services == {}


def test_safe_text() -> None:
    assert safe_text("ok text") == "ok text"
    assert safe_text("a\x1b[2Jb\r\nc\u202ed") == "a?[2Jb??c?d"
    assert safe_text("x" * 500, 10) == "x" * 9 + "\u2026"


def test_broker_drops_and_guard_kicks_raise_alerts_and_clear() -> None:
    m = HealthModel(started_ms=T0, rate_window_ms=60_000)
    assert m.apply(SYS_DROPPED_TOPIC, b"7", T0)
    assert evaluate(m, RULES, T0) == []  # one reading: nothing known to have grown
    m.apply(SYS_DROPPED_TOPIC, b"9", T0 + 10_000)
    m.apply(SYS_GUARD_KICKED_PREFIX + "cam9", b"1", T0 + 10_000)
    m.apply(SYS_GUARD_KICKED_PREFIX + "cam9", b"3", T0 + 20_000)
    alerts = evaluate(m, RULES, T0 + 20_000)
    assert _rules(alerts) == {(RULE_BROKER_DROPPING, "broker"), (RULE_DEVICE_THROTTLED, "cam9")}
    dropping = next(a for a in alerts if a.rule == RULE_BROKER_DROPPING)
    assert dropping.value == 2 and dropping.severity == "critical"
    # Quiet for a whole window: both clear.
    m.apply(SYS_DROPPED_TOPIC, b"9", T0 + 100_000)
    m.apply(SYS_GUARD_KICKED_PREFIX + "cam9", b"3", T0 + 100_000)
    assert evaluate(m, RULES, T0 + 100_000) == []
    # A broker restart starts its counters again: no negative increase, no alert.
    m.apply(SYS_DROPPED_TOPIC, b"0", T0 + 110_000)
    assert evaluate(m, RULES, T0 + 110_000) == []
    assert not m.apply(SYS_DROPPED_TOPIC + "x", b"1", T0)
    assert not m.apply(SYS_GUARD_KICKED_PREFIX + "cam9", b"1" * 400, T0)


def _status(m: HealthModel, dev: str, t: int, retained: bool = False, **fields: object) -> None:
    m.apply(f"cam/{dev}/status", _j({"state": "online", **fields}), t, retained=retained)


def test_healthy_camera_says_ok() -> None:
    m = HealthModel(started_ms=T0)
    m.frames_observable = True
    _status(m, "c1", T0, rssi=-60, boot_id=1, reset_reason="poweron", interval_ms=1000)
    m.note_frame("c1", T0 + 5000)
    h = device_health(m, m.devices["c1"], T0 + 10_000)
    assert h.ok and h.cause == "ok" and h.kind == "ok"


def test_brownout_resets_weak_wifi_and_reconnects_are_causes() -> None:
    m = HealthModel(started_ms=T0)
    # Seen retained first: the current boot's reason, time unknown.
    _status(m, "c1", T0, retained=True, boot_id=1, reset_reason="brownout", rssi=-82)
    h = device_health(m, m.devices["c1"], T0)
    assert [p.text for p in h.problems] == ["last reset: brown-out",
                                            "weak Wi-Fi (\u221282 dBm)"]
    for i, boot in enumerate((2, 3), start=1):
        m.apply("cam/c1/status", _j({"state": "offline"}), T0 + i * 600_000)
        _status(m, "c1", T0 + i * 600_000 + 1000, boot_id=boot, reset_reason="brownout",
                rssi=-82)
    m.apply("cam/c1/status", _j({"state": "offline"}), T0 + 1_900_000)
    _status(m, "c1", T0 + 1_901_000, boot_id=4, reset_reason="task_wdt", rssi=-82)
    h = device_health(m, m.devices["c1"], T0 + 2_000_000)
    assert h.kind == "brownout"
    assert h.cause == ("brown-out resets (3 in 24h); task watchdog reset 1m39s ago; "
                       "weak Wi-Fi (\u221282 dBm); reconnects (3 in 1h)")
    # A day later the resets and reconnects have aged out; the Wi-Fi is still weak.
    h = device_health(m, m.devices["c1"], T0 + 2_000_000 + 86_400_000)
    assert h.cause == "weak Wi-Fi (\u221282 dBm)"


def test_software_and_power_on_resets_are_not_problems() -> None:
    m = HealthModel(started_ms=T0)
    for boot, reason in enumerate(("poweron", "sw", "deepsleep", "\x1b[2J")):
        _status(m, "c1", T0 + boot, boot_id=boot, reset_reason=reason)
    assert device_health(m, m.devices["c1"], T0 + 10).ok


def test_rejected_share_comes_from_the_ingestor_status() -> None:
    m = HealthModel(started_ms=T0)
    _status(m, "c1", T0)
    _status(m, "c2", T0)
    for i, (f1, r1, f2) in enumerate(((0, 0, 0), (88, 12, 100), (176, 24, 200))):
        m.apply("svc/ingestor/status", _j({
            "state": "online", "frames_stored": f1 + f2, "rejected": r1,
            "device_rejected": {"c1": r1, "c2": 0, "bad id!": 5},
            "device_frames": {"c1": f1, "c2": f2}}), T0 + i * 1000)
    assert device_health(m, m.devices["c1"], T0 + 3000).cause == "rejected frames 12%"
    assert device_health(m, m.devices["c2"], T0 + 3000).ok
    assert "bad id!" not in m.device_rates


def test_frame_gap_and_offline_and_status_column() -> None:
    m = HealthModel(started_ms=T0)
    m.frames_observable = True
    _status(m, "c1", T0, interval_ms=60_000)
    m.note_frame("c1", T0)
    assert device_health(m, m.devices["c1"], T0 + 179_000).ok   # 3 intervals not yet over
    h = device_health(m, m.devices["c1"], T0 + 181_000)
    assert h.kind == "frame_gap" and h.cause == "no frame for 3m01s"
    m.apply("cam/c2/status", _j({"state": "offline"}), T0)
    assert device_health(m, m.devices["c2"], T0 + 60_000).cause == "offline"
    text = format_status(m, T0 + 181_000)
    assert "HEALTH" in text.splitlines()[2]
    row = next(line for line in text.splitlines() if line.startswith("c1 "))
    assert row.endswith("no frame for 3m01s")
