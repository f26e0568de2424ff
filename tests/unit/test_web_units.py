"""Pure parts of the web service: sessions, CSRF, rate limit, commands, live model, media."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from web.auth import RateLimiter, Sessions
from web.commands import CommandError, set_command
from web.live import LiveModel
from web.media import inside
from web.users import hash_password, verify_password


def test_sessions_refuse_forged_expired_and_revoked() -> None:
    s = Sessions(b"k" * 32, 60)
    cookie, sess = s.issue("alice", "operator", now=1000)
    assert s.check(cookie, now=1001) == sess
    assert s.check(cookie, now=1061) is None
    body, mac = cookie.split(".")
    assert s.check(body + "." + mac[:-2] + "AA", now=1001) is None
    assert Sessions(b"x" * 32, 60).check(cookie, now=1001) is None
    assert s.csrf_ok(sess.sid, s.csrf_token(sess.sid))
    assert not s.csrf_ok(sess.sid, s.csrf_token("other"))
    assert not s.csrf_ok(sess.sid, None)
    s.revoke(sess)
    assert s.check(cookie) is None


def test_rate_limiter_window_and_bound() -> None:
    r = RateLimiter(3, 10.0, max_keys=2)
    for t in (0, 1, 2):
        r.fail("ip", now=t)
    assert r.retry_after("ip", now=3) == pytest.approx(7)
    assert r.retry_after("ip", now=10.5) == 0
    r.fail("a", now=0)
    r.fail("b", now=0)
    assert len(r._hits) == 2


def test_scrypt_hash_round_trip() -> None:
    h = hash_password("correct horse", n_log2=10)
    assert verify_password("correct horse", h)
    assert not verify_password("wrong horse", h)
    assert not verify_password("x", "garbage$$")


@pytest.mark.parametrize(("form", "size", "why"), [
    ({"interval_ms": "99"}, None, "100..86400000"),
    ({"interval_ms": "86400001"}, None, "100..86400000"),
    ({"jpeg_quality": "64"}, None, "4..63"),
    ({"jpeg_quality": "5", "frame_size": "UXGA"}, None, "at least 6"),
    ({"jpeg_quality": "5"}, "XGA", "at least 6"),
    ({"frame_size": "svga"}, None, "one of"),
    ({"interval_ms": "\uff11\uff12\uff13"}, None, "whole number"),  # full-width digits
    ({}, None, "nothing to set"),
])
def test_commands_refused_like_the_firmware(form: dict[str, str], size: str | None,
                                            why: str) -> None:
    with pytest.raises(CommandError, match=why):
        set_command(form, size)


def test_command_payload() -> None:
    assert json.loads(set_command({"interval_ms": "100", "frame_size": "VGA",
                                   "jpeg_quality": "4"})) == {
        "cmd": "set", "interval_ms": 100, "frame_size": "VGA", "jpeg_quality": 4}


def test_live_model_bounds_and_hostile_payloads() -> None:
    m = LiveModel("cam", "alerts", max_devices=2, history=3)
    for payload in (b"", b"\xff", b"[" * 10000, b"[]", b'{"state":{"a":1}}'):
        m.apply("cam/a/status", payload, 1)
    for i in range(5):
        m.apply("cam/a/status", json.dumps({"state": "online", "rssi": -i}).encode(), i)
    assert len(m.devices["a"].history) == 3
    m.apply("cam/b/status", b'{"state":"online"}', 1)
    m.apply("cam/c/status", b'{"state":"online"}', 1)
    assert set(m.devices) == {"a", "b"} and m.counters.devices_dropped == 1
    assert m.apply("cam/../status", b'{"state":"x"}', 1) is None
    assert m.apply("alerts/r/a", b'{"message":"m"}', 1) is not None
    assert m.card("a") is not None and m.card("a")["alerts"] == 1  # type: ignore[index]
    m.apply("alerts/r/a", b"", 2)
    assert m.card("a")["alerts"] == 0  # type: ignore[index]


def test_media_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "ok.mp4").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "videos" / "link.mp4").symlink_to(tmp_path / "secret")
    assert inside(root, "videos/ok.mp4") == (root / "videos" / "ok.mp4").resolve()
    for key in ("videos/link.mp4", "../secret", "videos/../../secret", "/etc/passwd",
                "videos//ok.mp4", "videos/.x", ""):
        assert inside(root, key) is None, key


def test_cards_since_gives_what_changed_after_a_render() -> None:
    # A page rendered at change n opens its stream a moment later: every card changed
    # after n comes first on the stream (the race the browser tests once lost).
    m = LiveModel("cam", "alerts")
    m.apply("cam/a/status", b'{"state":"online"}', 1)
    m.apply("cam/b/status", b'{"state":"online"}', 2)
    rendered_at = m.seq
    assert m.cards_since(rendered_at) == []
    m.apply("cam/b/status", b'{"state":"offline"}', 3)
    m.apply("cam/x/status", b"not json", 4)  # no change, no new number
    assert [c["id"] for c in m.cards_since(rendered_at)] == ["b"]
    assert m.cards_since(rendered_at)[0]["state"] == "offline"
    m.apply("alerts/no_frame/a", b'{"rule":"no_frame","subject":"a","message":"x"}', 5)
    assert {c["id"] for c in m.cards_since(rendered_at)} == {"a", "b"}
    assert {c["id"] for c in m.cards_since(-1)} == {"a", "b"}
