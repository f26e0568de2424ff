"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright.

A real Mosquitto (the ``broker`` fixture, with an ``operator-web`` account), a real
SQLite catalog holding real MP4s made by the encoder's muxer, and ``python -m web``
started as a process over HTTPS with the broker's own server certificate. Screenshots
of every page are written (docs/screenshots/ with CAM_SCREENSHOTS=docs/screenshots).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle, free_port, wait_port
from camstack.videoindex import make_video, video_row
from catalog import open_catalog
from catalog.signing import load_or_create_key, public_key_pem
from config.loader import to_toml
from config.settings import CatalogSettings
from contract.events import VideoEvent
from web.users import UsersFile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("CAM_SCREENSHOTS", "") or REPO / ".screenshots")
"""Where the page screenshots go: ``CAM_SCREENSHOTS=docs/screenshots`` refreshes the ones
README shows; by default a git-ignored folder, so a test run leaves the tree clean."""
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DAY0 = 1_795_515_300_000  # 2026-11-24T10:15:00Z
OP, OP_PW = "alice", "operator-password-1"
VIEWER, VIEWER_PW = "victor", "viewer-password-1"

playwright_sync = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():  # pragma: no cover - `make deps` installs it
    pytest.skip("chromium is not installed (make deps)", allow_module_level=True)


@dataclass
class Site:
    """A running web service and what it serves."""

    base: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    ca: Path
    videos: dict[str, VideoEvent] = field(default_factory=dict)
    devices: dict[str, mqtt.Client] = field(default_factory=dict)

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One raw request: the path goes on the wire exactly as given."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl(),
                                           timeout=20)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            got: dict[str, str] = {}
            for k, v in resp.getheaders():
                got[k.lower()] = f"{got[k.lower()]}, {v}" if k.lower() in got else v
            return resp.status, got, resp.read()
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.request("GET", "/healthz")[0] == 200


def _login_cookie(site: Site, user: str, password: str) -> tuple[str, str]:
    """Log in over raw HTTP; the session cookie and the page's CSRF token."""
    status, headers, body = site.request("GET", "/login")
    assert status == 200
    nonce = re.search(r"camstack_login=([0-9a-f]+)", headers["set-cookie"])
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body)
    assert nonce and csrf
    form = urllib.parse.urlencode({"csrf": csrf[1].decode(), "username": user,
                                   "password": password, "next": "/cameras"}).encode()
    status, headers, _ = site.request("POST", "/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"camstack_login={nonce[1]}"})
    assert status == 303, status
    cookie = re.search(r"camstack_session=([^;]+)", headers["set-cookie"])
    assert cookie
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    assert "Secure" in headers["set-cookie"]
    _, _, page = site.request("GET", "/cameras", headers={
        "Cookie": f"camstack_session={cookie[1]}"})
    token = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert token
    return f"camstack_session={cookie[1]}", token[1].decode()


def _device_client(broker: BrokerHandle, device: str) -> mqtt.Client:
    password = broker.add_device(device)
    return broker.client(device, password, client_id=device)


def _status(client: mqtt.Client, device: str, **fields: Any) -> None:
    info = client.publish(f"cam/{device}/status", json.dumps(fields), qos=1, retain=True)
    info.wait_for_publish(10)


def start_web(broker: BrokerHandle, root: Path, name: str, *, users: bool = True,
              max_failures: int = 5) -> Site:
    """Data, catalog and a running ``python -m web`` under ``root``."""
    storage = root / "storage"
    storage.mkdir(parents=True)
    key = load_or_create_key(root / "video-signing.key")
    (root / "video-signing.pub").write_bytes(public_key_pem(key))
    cat = open_catalog(CatalogSettings(path=root / "catalog.sqlite3"))
    videos: dict[str, VideoEvent] = {}
    for i, (device, day) in enumerate([("webcam01", 0), ("webcam01", 0), ("webcam01", 1),
                                        ("webcam02", 0), ("webcam03", 0)]):
        ev = make_video(storage, device, DAY0 + day * 86_400_000 + i * 3_600_000,
                        frames=60, counter=i + 1)
        cat.record_video(video_row(storage, ev, key))
        videos[f"{device}/{i}"] = ev
    # webcam03's file is changed after it was signed: the tamper check must say so.
    tampered = storage / videos["webcam03/4"].location
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    # A row whose location points outside the storage root, and a symlink that does.
    evil = VideoEvent("webcam02", "webcam02-evil-0001", "videos/webcam02/x.mp4", 1, 0, 1.0,
                      10, DAY0, DAY0 + 1)
    row = video_row(storage, videos["webcam02/3"], None).model_copy(update={
        "batch": evil.batch, "location": "videos/webcam02/../../../../etc/passwd",
        "thumbnail": None})
    cat.record_video(row)
    (storage / "videos" / "webcam02" / "link.mp4").symlink_to("/etc/passwd")
    cat.record_video(row.model_copy(update={"batch": "webcam02-link-0001",
                                            "location": "videos/webcam02/link.mp4"}))
    cat.close()
    if users:
        uf = UsersFile(root / "users.json")
        uf.add(OP, "operator", OP_PW)
        uf.add(VIEWER, "viewer", VIEWER_PW)
    with contextlib.suppress(Exception):
        broker.add_service("operator-web")
    port = free_port()
    doc = {
        "mqtt": {"host": "127.0.0.1", "port": broker.tls_port, "username": "operator-web",
                 "client_id": f"operator-web-{name}",
                 "password_file": str(broker.layout.service_password_file("operator-web")),
                 "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                 "tls": {"enabled": True, "ca_file": str(broker.ca_file)}},
        "storage": {"root": str(storage)},
        "catalog": {"path": str(root / "catalog.sqlite3")},
        "store": {"root": str(root / "objects")},
        "log": {"format": "json"},
        "http": {"host": "127.0.0.1", "port": port,
                 "tls_cert_file": str(broker.layout.pki.server_cert),
                 "tls_key_file": str(broker.layout.pki.server_key),
                 "users_file": str(root / "users.json"),
                 "session_secret_file": str(root / "session.key"),
                 # The session broker keeps every earlier test's retained device
                 # statuses: the whole suite leaves well over 60 cameras sorting
                 # before "webcam0x", which page 1 must still show.
                 "login_max_failures": max_failures, "page_size": 1000,
                 "video_public_key_file": str(root / "video-signing.pub")},
    }
    (root / "web.toml").write_text(to_toml(doc))
    log = root / "web.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CAM_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "web", "--config", str(root / "web.toml")],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=root)
    wait_port("127.0.0.1", port, timeout=30)
    site = Site(f"https://localhost:{port}", port, root, proc, log, broker.ca_file, videos)
    return site


def stop_web(site: Site) -> None:
    for c in site.devices.values():
        c.disconnect()
        c.loop_stop()
    if site.proc.poll() is None:
        site.proc.send_signal(signal.SIGTERM)
        try:
            site.proc.wait(15)
        except subprocess.TimeoutExpired:
            site.proc.kill()
            site.proc.wait()


@pytest.fixture(scope="module")
def site(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start_web(broker, tmp_path_factory.mktemp("web"), "main")
    for device, state, rssi in (("webcam01", "online", -61), ("webcam02", "offline", None),
                                ("webcam03", "online", -75)):
        c = s.devices[device] = _device_client(broker, device)
        fields: dict[str, Any] = {"state": state, "fw": "1.2.0", "heap_free": 123456,
                                  "queue": 0, "frames_sent": 10, "frame_size": "SVGA",
                                  "jpeg_quality": 12, "interval_ms": 1000}
        if rssi is not None:
            fields["rssi"] = rssi
        _status(c, device, **fields)
    # The newest video of webcam01, as the encoder announces it (retained).
    enc = broker.client("encoder")
    ev = s.videos["webcam01/2"]
    enc.publish("cam/webcam01/video", ev.to_json(), qos=1, retain=True).wait_for_publish(10)
    enc.publish("svc/encoder/status", json.dumps({"state": "online", "videos": 5}), qos=1,
                retain=True).wait_for_publish(10)
    enc.disconnect()
    op = broker.client("operator")
    op.publish("alerts/device_offline/webcam02", json.dumps({
        "rule": "device_offline", "subject": "webcam02", "severity": "warning",
        "message": "webcam02 offline for 6m", "value": 360, "threshold": 300,
        "since_ms": DAY0}), qos=1, retain=True).wait_for_publish(10)
    op.disconnect()
    yield s
    stop_web(s)
    assert s.proc.returncode in (0, -signal.SIGTERM), s.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_sync.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            ignore_https_errors=True, viewport={"width": 1100, "height": 720},
            accept_downloads=True,
            # Playwright's wait_for_function evaluates strings; the page's CSP forbids that.
            # Without the CSP the escaping checks below are stricter, not weaker.
            bypass_csp=True)
        ctx.set_default_timeout(20_000)
        # expect() has its own 5 s default; the whole suite on 2 CPUs can take longer
        # for the first live update (a positive signal: a pass returns at once).
        playwright_sync.expect.set_options(timeout=20_000)
        yield ctx
        ctx.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    browser_context.clear_cookies()
    pg = browser_context.new_page()
    yield pg
    pg.close()


def login(page: Any, site: Site, user: str, password: str) -> None:
    page.goto(site.base + "/cameras")
    playwright_sync.expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    playwright_sync.expect(page).to_have_url(re.compile(r"/cameras$"))


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


# ----------------------------------------------------------------------------- tests


def test_nothing_but_healthz_without_login(site: Site) -> None:
    status, headers, body = site.request("GET", "/healthz")
    assert (status, body) == (200, b"ok")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    for path in ("/", "/cameras", "/cameras/webcam01", "/alerts", "/services", "/events",
                 "/static/app.js", f"/videos/webcam01/{site.videos['webcam01/0'].batch}.mp4",
                 f"/thumbs/webcam01/{site.videos['webcam01/0'].batch}.jpg"):
        status, headers, _ = site.request("GET", path)
        assert status == 303 and headers["location"].startswith("/login"), path
    status, _, _ = site.request("POST", "/cameras/webcam01/cmd", body=b"interval_ms=500",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303


def test_login_grid_fills_and_updates_live(site: Site, page: Any) -> None:
    expect = playwright_sync.expect
    page.goto(site.base + "/login")
    shot(page, "login")
    login(page, site, OP, OP_PW)
    grid = page.locator("#grid")
    for device in ("webcam01", "webcam02", "webcam03"):
        expect(grid.locator(f'[data-device="{device}"]')).to_have_count(1)
    card = grid.locator('[data-device="webcam01"]')
    expect(card.locator("[data-f=state]")).to_have_text("online")
    expect(card.locator("[data-f=rssi]")).to_have_text("-61")
    expect(card.locator("img")).to_have_attribute(
        "src", f"/thumbs/webcam01/{site.videos['webcam01/2'].batch}.jpg")
    # Thumbnails load lazily (a grid of 1,000 cameras): with the session broker's other
    # devices on the page, this card may start below the fold.
    card.scroll_into_view_if_needed()
    page.wait_for_function("document.querySelector('[data-device=webcam01] img').naturalWidth"
                           " > 0")
    expect(grid.locator('[data-device="webcam02"] [data-f=alerts]')).to_have_text("1 ⚠")
    expect(page.locator("#live")).to_have_text("● live")
    shot(page, "cameras")
    # A status change reaches the open page without a reload.
    _status(site.devices["webcam01"], "webcam01", state="online", rssi=-42, heap_free=99_000,
            queue=3, frames_sent=20)
    expect(card.locator("[data-f=rssi]")).to_have_text("-42")
    expect(card.locator("[data-f=queue]")).to_have_text("3")
    _status(site.devices["webcam03"], "webcam03", state="offline")
    expect(grid.locator('[data-device="webcam03"] [data-f=state]')).to_have_text("offline")
    expect(grid.locator('[data-device="webcam03"]')).to_have_class(re.compile("state-offline"))
    # Filters.
    # Other tests leave their cameras (cam02, simcam02...) on the session broker, so the
    # filter is asserted by which cards it keeps, not by how many the broker holds.
    page.goto(site.base + "/cameras?q=webcam02")
    expect(page.locator('#grid [data-device="webcam02"]')).to_have_count(1)
    expect(page.locator('#grid [data-device="webcam01"]')).to_have_count(0)
    expect(page.locator("#grid .card:not([data-device*=webcam02])")).to_have_count(0)
    page.goto(site.base + "/cameras?sick=1")
    expect(page.locator('#grid [data-device="webcam01"]')).to_have_count(0)


def test_camera_page_plays_downloads_and_checks(site: Site, page: Any) -> None:
    expect = playwright_sync.expect
    login(page, site, OP, OP_PW)
    first = site.videos["webcam01/0"]
    page.goto(site.base + "/cameras/webcam01?day=2026-11-24")
    expect(page.locator(".videos li")).to_have_count(2)
    expect(page.locator(".days a")).to_have_count(2)
    page.click(f'.videos a[href*="{first.batch}"]')
    video = page.locator("#player")
    expect(video).to_have_attribute("src", f"/videos/webcam01/{first.batch}.mp4")
    page.evaluate("document.getElementById('player').play()")
    page.wait_for_function("document.getElementById('player').currentTime > 1.0",
                           timeout=20_000)
    assert page.evaluate("document.getElementById('player').error") is None
    expect(page.locator(".player .facts")).to_contain_text("60 (0 skipped)")
    shot(page, "camera")
    with page.expect_download() as dl:
        page.click("#download")
    path = dl.value.path()
    assert Path(path).read_bytes() == (site.root / "storage" / first.location).read_bytes()
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("Intact")
    page.goto(site.base + "/cameras/webcam03")
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("file altered")


def test_range_requests_are_answered_206(site: Site) -> None:
    cookie, _ = _login_cookie(site, OP, OP_PW)
    ev = site.videos["webcam01/1"]
    data = (site.root / "storage" / ev.location).read_bytes()
    path = f"/videos/webcam01/{ev.batch}.mp4"
    status, headers, body = site.request("GET", path, headers={"Cookie": cookie,
                                                               "Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["content-range"] == f"bytes 100-1099/{len(data)}"
    status, _, body = site.request("GET", path, headers={"Cookie": cookie,
                                                         "Range": f"bytes=-{len(data) + 5}"})
    assert status == 206 and body == data
    status, _, _ = site.request("GET", path, headers={"Cookie": cookie,
                                                      "Range": f"bytes={len(data) + 10}-"})
    assert status == 416
    status, headers, body = site.request("GET", path + "?download=1", headers={"Cookie": cookie})
    assert status == 200 and body == data and "attachment" in headers["content-disposition"]


def test_path_traversal_is_refused(site: Site) -> None:
    cookie, _ = _login_cookie(site, OP, OP_PW)
    for path in ("/videos/..%2f..%2fetc%2fpasswd", "/videos/..%2f..%2fetc%2fpasswd.mp4",
                 "/videos/webcam01/..%2f..%2f..%2fetc%2fpasswd.mp4",
                 "/media/cam01/../../x", "/videos/webcam01/../../../etc/passwd",
                 "/thumbs/webcam01/..%2f..%2fstorage.jpg", "/static/..%2fapp.py",
                 "/static/../users.py", "/cameras/..%2f..%2fetc",
                 "/videos/%2e%2e/%2e%2e/etc/passwd.mp4",
                 # Catalog rows pointing outside the root (by "..", by a symlink).
                 "/videos/webcam02/webcam02-evil-0001.mp4",
                 "/videos/webcam02/webcam02-link-0001.mp4",
                 "/thumbs/webcam02/webcam02-evil-0001.jpg"):
        status, _, body = site.request("GET", path, headers={"Cookie": cookie})
        assert status in (400, 404), (path, status)
        assert b"root:" not in body, path
    assert site.alive()


def test_forged_forms_are_refused(site: Site) -> None:
    cookie, csrf = _login_cookie(site, OP, OP_PW)
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    for body in (b"interval_ms=500", b"interval_ms=500&csrf=", b"interval_ms=500&csrf=AAAA",
                 b"interval_ms=500&csrf=" + csrf[:-2].encode() + b"xx"):
        status, _, _ = site.request("POST", "/cameras/webcam01/cmd", body=body, headers=form)
        assert status == 403, body
    # Valid tokens, values the firmware would refuse: nothing is sent, the page says why.
    for text, why in ((f"csrf={csrf}&jpeg_quality=3", "jpeg_quality must be 4..63"),
                      (f"csrf={csrf}&interval_ms=50", "interval_ms must be 100..86400000"),
                      (f"csrf={csrf}&frame_size=HUGE", "frame_size must be one of"),
                      (f"csrf={csrf}", "nothing to set")):
        status, headers, _ = site.request("POST", "/cameras/webcam01/cmd", body=text.encode(),
                                          headers=form)
        assert status == 303, text
        assert why in urllib.parse.unquote_plus(headers["location"]), headers["location"]
    # A valid token from another origin.
    status, _, _ = site.request("POST", "/cameras/webcam01/cmd",
                                body=f"interval_ms=500&csrf={csrf}".encode(),
                                headers={**form, "Origin": "https://evil.example"})
    assert status == 403
    # Another session's token.
    _, other_csrf = _login_cookie(site, OP, OP_PW)
    assert other_csrf != csrf
    status, _, _ = site.request("POST", "/cameras/webcam01/cmd",
                                body=f"interval_ms=500&csrf={other_csrf}".encode(), headers=form)
    assert status == 403
    # Logout without a token, and a login without the login form's token.
    assert site.request("POST", "/logout", body=b"", headers=form)[0] == 403
    status, _, _ = site.request("POST", "/login", body=b"username=alice&password=x",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403


def test_operator_sends_a_command_viewer_cannot(site: Site, page: Any,
                                                broker: BrokerHandle) -> None:
    expect = playwright_sync.expect
    got: list[bytes] = []
    cam = site.devices["webcam01"]
    cam.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    cam.subscribe("cam/webcam01/cmd", qos=1)
    login(page, site, OP, OP_PW)
    page.goto(site.base + "/cameras/webcam01")
    page.fill("input[name=interval_ms]", "5000")
    page.select_option("select[name=frame_size]", "XGA")
    page.fill("input[name=jpeg_quality]", "5")
    page.click("#cmd button")
    expect(page.locator("p.error")).to_contain_text("at least 6 at XGA")
    page.fill("input[name=interval_ms]", "5000")
    page.select_option("select[name=frame_size]", "VGA")
    page.fill("input[name=jpeg_quality]", "10")
    page.click("#cmd button")
    expect(page.locator("p.ok")).to_contain_text("sent")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert [json.loads(p) for p in got] == [
        {"cmd": "set", "frame_size": "VGA", "interval_ms": 5000, "jpeg_quality": 10}]
    # The viewer sees no form, and a hand-made POST with its own valid token is refused.
    page.context.clear_cookies()
    login(page, site, VIEWER, VIEWER_PW)
    page.goto(site.base + "/cameras/webcam01")
    expect(page.locator("#cmd")).to_have_count(0)
    token = page.locator("form.logout input[name=csrf]").get_attribute("value")
    resp = page.request.post(site.base + "/cameras/webcam01/cmd",
                             form={"csrf": token, "interval_ms": "500"})
    assert resp.status == 403
    assert len(got) == 1


def test_alerts_and_services_pages(site: Site, page: Any) -> None:
    expect = playwright_sync.expect
    login(page, site, VIEWER, VIEWER_PW)
    page.goto(site.base + "/alerts")
    expect(page.locator('#alerts [data-alert="device_offline/webcam02"]')).to_contain_text(
        "webcam02 offline for 6m")
    shot(page, "alerts")
    page.goto(site.base + "/services")
    expect(page.locator('#services [data-service="encoder"]')).to_contain_text("online")
    expect(page.locator('#services [data-service="operator-web"]')).to_contain_text("online")
    shot(page, "services")


def test_hostile_mqtt_payloads_are_escaped_and_survived(site: Site, page: Any,
                                                        broker: BrokerHandle) -> None:
    expect = playwright_sync.expect
    cam = site.devices["webcam02"]
    hostile = [
        b"\xff\xfe not json", b"[" * 100_000 + b"]" * 100_000, b"[1,2,3]", b"null",
        b'{"state": 5}', json.dumps({"state": "x" * 100_000}).encode(),
        json.dumps({f"k{i}": i for i in range(5000)}).encode(),
        json.dumps({"state": "online", "rssi": {"a": {"b": {"c": 1}}}, "heap_free": [1, 2],
                    "queue": 1e308, "fw": "\x1b[2J\u202e\x00evil"}).encode(),
        b'{"state": "online", "rssi": 123456789012345678901234567890}',
    ]
    for payload in hostile:
        cam.publish("cam/webcam02/status", payload, qos=1, retain=True).wait_for_publish(10)
    script = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    _status(cam, "webcam02", state=script, fw=script, rssi=-1)
    login(page, site, OP, OP_PW)
    page.goto(site.base + "/cameras?q=webcam02")
    card = page.locator('[data-device="webcam02"]')
    expect(card.locator("[data-f=rssi]")).to_have_text("-1")
    # A state is one short word: cut at 32 characters (contract.events.safe_text).
    expect(card.locator("[data-f=state]")).to_have_text(script[:31] + "…")
    assert page.title() != "pwned"
    assert page.locator("#grid script").count() == 0 and page.locator("#grid img[src=x]"
                                                                       ).count() == 0
    page.goto(site.base + "/cameras/webcam02")
    expect(page.locator('.facts [data-f="fw"]')).to_have_text(script)
    # Live: the same text over the event stream stays text.
    _status(cam, "webcam02", state="offline", fw=script + "2")
    page.goto(site.base + "/cameras?q=webcam02")
    _status(cam, "webcam02", state="<b>3</b>", rssi=-2)
    expect(card.locator("[data-f=state]")).to_have_text("<b>3</b>")
    assert page.title() != "pwned"
    # Other hostile topics: services and alerts with odd names and payloads.
    op = broker.client("operator")
    for topic, payload in (("alerts/a/b", b"[]"), ("alerts/x/" + "y" * 200, b"{}"),
                           ("alerts/r/s", b"{" * 50_000), ("alerts/r/s", b""),
                           ("alerts/r/s", json.dumps({"message": "\x00" * 1000}).encode())):
        op.publish(topic, payload, qos=1, retain=False).wait_for_publish(10)
    op.disconnect()
    _status(cam, "webcam02", state="offline", rssi=-3)
    expect(card.locator("[data-f=rssi]")).to_have_text("-3")
    assert site.alive()


def test_hostile_http_inputs_never_break_the_service(site: Site) -> None:
    cookie, csrf = _login_cookie(site, OP, OP_PW)
    auth = {"Cookie": cookie}
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    gets = ["/cameras?q=" + "A" * 5000, "/cameras?q=%00%1b%5b2J", "/cameras?page=-1",
            "/cameras?page=1e99", "/cameras?page=99999999999999999999", "/cameras?state=%ff",
            "/cameras?q[a][b]=1&q=2&q=3", "/cameras/webcam01?day=9999-99-99",
            "/cameras/webcam01?day=" + "9" * 100, "/cameras/webcam01?batch=..%2f..",
            "/cameras/webcam01?batch=" + "b" * 500, "/cameras/" + "c" * 5000,
            "/cameras/%00", "/cameras/%ff%fe", "/cameras/webcam01?verify=1&batch=nope",
            "/videos/webcam01/" + "x" * 3000 + ".mp4", "/thumbs/%00/%00.jpg",
            "/login?next=//evil.example", "/login?next=" + "%0d%0aSet-Cookie:x=y",
            "/" + "z" * 9000]
    for path in gets:
        status, headers, _ = site.request("GET", path, headers=auth)
        assert status < 500, (path[:80], status)
        assert "x=y" not in headers.get("set-cookie", ""), path
    for cookie_value in ("x" * 5000, "a.b", "...", "%00", "e30.e30", "camstack_session=" +
                         "A" * 900 + "." + "B" * 43):
        status, _, _ = site.request("GET", "/cameras",
                                    headers={"Cookie": f"camstack_session={cookie_value}"})
        assert status == 303, cookie_value[:40]
    bodies = [b"csrf=" + csrf.encode() + b"&interval_ms=" + b"9" * 5000,
              f"csrf={csrf}&interval_ms=abc".encode(), f"csrf={csrf}&interval_ms=-5".encode(),
              f"csrf={csrf}&interval_ms=1e9".encode(), f"csrf={csrf}&frame_size=%00".encode(),
              f"csrf={csrf}&jpeg_quality=%EF%BC%95".encode(),  # a full-width digit
              f"csrf={csrf}&frame_size[a][b]=VGA".encode(), b"\xff\xfe\xfd",
              f"csrf={csrf}&".encode() + b"&".join(b"f%d=1" % i for i in range(5000))]
    for body in bodies:
        status, _, _ = site.request("POST", "/cameras/webcam01/cmd", body=body, headers=form)
        assert status < 500, (body[:60], status)
    status, _, _ = site.request("POST", "/cameras/webcam01/cmd", body=b"a=" + b"x" * 100_000,
                                headers=form)
    assert status == 413
    status, _, _ = site.request("POST", "/cameras/webcam01/cmd", body=b'{"csrf": 1}',
                                headers={**auth, "Content-Type": "application/json"})
    assert status == 415
    for body in (b"username=" + b"u" * 10_000 + b"&password=p", b"\x00\x01",
                 b"username=alice&password=" + b"p" * 20_000):
        status, _, _ = site.request("POST", "/login", body=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status in (403, 413), status
    assert site.alive()


def test_login_rate_limit(broker: BrokerHandle, tmp_path: Path) -> None:
    s = start_web(broker, tmp_path / "rl", "rl", max_failures=3)
    try:
        def attempt(user: str, password: str) -> int:
            _, headers, body = s.request("GET", "/login")
            nonce = re.search(r"camstack_login=([0-9a-f]+)", headers["set-cookie"])
            csrf = re.search(rb'name="csrf" value="([^"]+)"', body)
            assert nonce and csrf
            form = urllib.parse.urlencode({"csrf": csrf[1].decode(), "username": user,
                                           "password": password}).encode()
            return s.request("POST", "/login", body=form, headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"camstack_login={nonce[1]}"})[0]

        assert [attempt(OP, "wrong-password") for _ in range(3)] == [401, 401, 401]
        assert attempt(OP, OP_PW) == 429  # the account (and this IP) is locked out now
        assert attempt(VIEWER, VIEWER_PW) == 429  # same client IP
        assert s.alive()
    finally:
        stop_web(s)
    assert "web_login_limited" in s.log.read_text()


def test_help_and_user_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CAM_CONFIG", None)
    res = subprocess.run([sys.executable, "-m", "web", "--help"], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert res.returncode == 0 and "--config" in res.stdout
    cfg = tmp_path / "web.toml"
    cfg.write_text(to_toml({"http": {"users_file": str(tmp_path / "u.json")}}))
    res = subprocess.run([sys.executable, "-m", "web", "user", "add", "bob", "--role", "viewer",
                          "--config", str(cfg)], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    password = res.stdout.split("password (shown once): ")[1].strip()
    user = UsersFile(tmp_path / "u.json").authenticate("bob", password)
    assert user is not None and user.role == "viewer"
    assert (tmp_path / "u.json").stat().st_mode & 0o777 == 0o600
    res = subprocess.run([sys.executable, "-m", "web", "user", "add", "b/../x", "--role",
                          "viewer", "--config", str(cfg)], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert res.returncode == 2
    assert shutil.which(sys.executable)
