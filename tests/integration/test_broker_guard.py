"""The broker guard plugin (broker/plugin) against the real Mosquitto and project config.

Findings of issue 10 it closes: a flooding device made the broker drop messages it had
acknowledged to an honest camera (3); a device joined ``$share/encoders/...`` and
swallowed ready events (4); the device listener could be filled with sockets that never
log in (5); a retained frame was replayed to every new subscriber (6).

The flooder speaks raw MQTT 3.1.1 (where a denied publish is still PUBACKed), so every
PUBACK it gets, and the moment the broker closes its socket, are seen exactly.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle, start_broker
from camstack.mqttwait import Collector

pytestmark = pytest.mark.integration

# Scaled-down budgets and queues: one device may send 100 messages at once and 50/s;
# the subscriber's window is 20 and its queue 500 (>= the burst, as docs/security.md
# sizes it), so an honest 20/s device beside a flooder must lose nothing.
BUDGET = {"device_msgs_per_s": 50.0, "device_burst_msgs": 100}
QUEUES = {"max_inflight_messages": 20, "max_queued_messages": 500, "sys_interval_s": 1,
          "guard_publish_interval_s": 0.5}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    handle = start_broker(tmp_path_factory.mktemp("guarded"), use_docker=False,
                          **BUDGET, **QUEUES)
    yield handle
    handle.close()


def _skip_without_guard(b: BrokerHandle) -> None:
    if not b.settings.guard_enabled:  # pragma: no cover - Docker image without the plugin
        pytest.skip("the guard plugin is not loaded in this broker")


# --- a raw MQTT 3.1.1 client ------------------------------------------------------------

def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining(len(body)) + body


def publish_packet(topic: str, mid: int, payload: bytes, *, retain: bool = False) -> bytes:
    return _packet(0x32 | (1 if retain else 0), _utf8(topic) + struct.pack("!H", mid) + payload)


class RawDevice:
    """MQTT 3.1.1 over plain TCP (the loopback listener: same accounts, ACL and guard)."""

    def __init__(self, broker: BrokerHandle, user: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", broker.local_port), timeout=10)
        body = (_utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
                + _utf8(user) + _utf8(user) + _utf8(password))
        self.sock.sendall(_packet(0x10, body))
        self.buf = b""
        self.closed = threading.Event()
        ptype, data = self._read_packet()
        assert ptype == 0x20 and data[1] == 0, f"CONNACK refused: {data!r}"
        self.acked: list[int] = []
        self.subacks: list[bytes] = []
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the broker")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_packet(self) -> tuple[int, bytes]:
        first = self._read_exact(1)[0]
        n, mult = 0, 1
        while True:
            b = self._read_exact(1)[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first & 0xF0, self._read_exact(n)

    def _read_loop(self) -> None:
        try:
            while True:
                ptype, data = self._read_packet()
                if ptype == 0x40:
                    self.acked.append(struct.unpack("!H", data[:2])[0])
                elif ptype == 0x90:
                    self.subacks.append(data[2:])
        except OSError:
            pass
        finally:
            self.closed.set()

    def send(self, data: bytes) -> bool:
        """False once the broker has closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def subscribe(self, topic: str) -> None:
        self.send(_packet(0x82, struct.pack("!H", 1) + _utf8(topic) + b"\x01"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _flood(dev: RawDevice, topic: str, *, seconds: float, start_mid: int = 1) -> int:
    """Publish QoS 1 as fast as the socket takes it, until kicked or ``seconds``."""
    mid, deadline = start_mid, time.monotonic() + seconds
    batch = 200
    while time.monotonic() < deadline and not dev.closed.is_set():
        data = b"".join(
            publish_packet(topic, (m - 1) % 65535 + 1, b"F" * 100 + struct.pack("!I", m))
            for m in range(mid, mid + batch))
        if not dev.send(data):
            break
        mid += batch
    return mid - start_mid


def _stream_honest(broker: BrokerHandle, dev: str, pw: str, n: int, rate: float) -> list[bytes]:
    """An honest camera: n QoS 1 messages at ``rate``/s, each waited for its PUBACK."""
    c = broker.client(dev, pw, client_id=dev, tls=False)
    sent = []
    try:
        for i in range(n):
            payload = f"honest-{i}".encode()
            info = c.publish(f"cam/{dev}/frame", payload, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            sent.append(payload)
            time.sleep(1 / rate)
    finally:
        c.disconnect()
        c.loop_stop()
    return sent


def _subscriber(broker: BrokerHandle, topic: str) -> tuple[mqtt.Client, Collector]:
    holder: dict[str, Collector] = {}

    def before(c: mqtt.Client) -> None:
        holder["col"] = Collector(c)

    c = broker.client("ingestor", client_id="ingestor", tls=False, before_connect=before)
    col = holder["col"]
    col.subscribe(topic, qos=1)
    return c, col


def _flood_beside_honest(broker: BrokerHandle, tag: str) -> dict[str, Any]:
    """A flooder and an honest device at once; what the subscriber got."""
    flooder, honest = f"gflood{tag}", f"ghonest{tag}"
    fpw, hpw = broker.add_device(flooder), broker.add_device(honest)
    sub, col = _subscriber(broker, "cam/+/frame")
    raw = RawDevice(broker, flooder, fpw)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(
        flood_sent=_flood(raw, f"cam/{flooder}/frame", seconds=3.0)))
    t.start()
    sent = _stream_honest(broker, honest, hpw, 40, 20.0)
    t.join()
    raw.close()
    # The end marker: once one arrives, everything queued before it was delivered or dropped.
    mc = broker.client(honest, hpw, client_id=honest, tls=False)
    try:
        for i in range(200):
            mc.publish(f"cam/{honest}/frame", f"end-{i}".encode(), qos=1).wait_for_publish(10)
            if col.wait_for(lambda ms: any(m.payload.startswith(b"end-") for m in ms), 0.1):
                break
    finally:
        mc.disconnect()
        mc.loop_stop()
    with col.lock:
        got = [m.payload for m in col.messages
               if m.topic == f"cam/{honest}/frame" and not m.payload.startswith(b"end-")]
        flood_got = [m.payload for m in col.messages if m.topic == f"cam/{flooder}/frame"]
    sub.disconnect()
    sub.loop_stop()
    result.update(sent=sent, got=got, flood_got=flood_got, raw=raw)
    return result


def _dropped(broker: BrokerHandle) -> int:
    """The broker's $SYS/broker/publish/messages/dropped (retained, every sys_interval)."""
    holder: dict[str, Collector] = {}

    def before(c: mqtt.Client) -> None:
        holder["col"] = Collector(c)

    c = broker.client("operator", client_id="operator", tls=False, before_connect=before)
    try:
        col = holder["col"]
        col.subscribe("$SYS/broker/publish/messages/dropped", qos=0)
        assert col.wait_for(bool, 10), "no $SYS dropped counter"
        return int(col.messages[-1].payload)
    finally:
        c.disconnect()
        c.loop_stop()


# --- (a) flood --------------------------------------------------------------------------

def test_without_the_guard_a_flood_drops_an_honest_devices_acknowledged_frames(
        tmp_path: Path) -> None:
    """The finding, reproduced at test scale: what the guard is for."""
    b = start_broker(tmp_path / "b", use_docker=False, guard_enabled=False, **QUEUES)
    try:
        r = _flood_beside_honest(b, "x")
        assert r["flood_sent"] > 1000
        # Every honest message was PUBACKed by the broker ...
        assert len(r["sent"]) == 40
        # ... yet some never reached the subscriber, and the broker counted the drops.
        assert len(r["got"]) < 40, "no overflow: the test no longer shows what the guard prevents"
        assert _dropped(b) > 0
    finally:
        b.close()


def test_flooder_is_kicked_unacked_while_an_honest_device_loses_nothing(
        guarded: BrokerHandle) -> None:
    _skip_without_guard(guarded)
    before = _dropped(guarded)
    r = _flood_beside_honest(guarded, "a")
    raw: RawDevice = r["raw"]
    # The flooder was disconnected by the broker after about its burst:
    assert raw.closed.wait(10)
    seqs = [struct.unpack("!I", p[-4:])[0] for p in r["flood_got"]]
    # (it wrote more than the broker passed on: the rest was refused, not queued)
    assert 0 < len(seqs) <= BUDGET["device_burst_msgs"] + 50 * 3 + 10
    assert len(seqs) < r["flood_sent"]
    # the broker passed on a prefix of its messages, nothing after the first refused one,
    assert seqs == list(range(1, len(seqs) + 1))
    # and acknowledged none it did not pass on. (Mosquitto closes the socket without
    # flushing PUBACKs still queued, so some passed-on messages may lack theirs: the
    # device resends them, a duplicate the ingestor ignores, never a loss.)
    acked = sorted(set(raw.acked))
    assert acked and set(acked) <= set(seqs)
    # The honest device: all 40 delivered, none dropped anywhere.
    assert r["got"] == r["sent"]
    assert _dropped(guarded) == before
    log = guarded.log_file.read_text(errors="replace")
    assert "camstack-guard: client gflooda over its budget" in log


def test_a_kicked_flooder_is_kicked_again_at_once_and_resends_at_budget(
        guarded: BrokerHandle) -> None:
    _skip_without_guard(guarded)
    dev = "gflood-again"
    pw = guarded.add_device(dev)
    sub, col = _subscriber(guarded, f"cam/{dev}/frame")
    try:
        raw = RawDevice(guarded, dev, pw)
        _flood(raw, f"cam/{dev}/frame", seconds=3.0)
        assert raw.closed.wait(10)
        raw.close()
        # Reconnecting at once gives no fresh burst: kicked again after what was earned.
        raw2 = RawDevice(guarded, dev, pw)
        _flood(raw2, f"cam/{dev}/frame", seconds=3.0, start_mid=10_001)
        assert raw2.closed.wait(10)
        raw2.close()
        # Sending at its budget, the device gets everything through and stays connected
        # (after a reconnect backoff, as the firmware's: at least 1 s, 50 messages earned).
        time.sleep(1.0)
        raw3 = RawDevice(guarded, dev, pw)
        todo = list(range(20_001, 20_061))
        for m in todo:
            assert raw3.send(publish_packet(f"cam/{dev}/frame", m % 65535,
                                            b"F" * 100 + struct.pack("!I", m)))
            time.sleep(1 / 40)

        def seqs(ms: list[mqtt.MQTTMessage]) -> list[int]:
            return [struct.unpack("!I", m.payload[-4:])[0] for m in ms]

        assert col.wait_for(lambda ms: set(todo) <= set(seqs(ms)), 10)
        assert not raw3.closed.is_set()
        raw3.close()
        got = seqs(col.messages)
        assert 0 < len([s for s in got if s < 10_001]) <= BUDGET["device_burst_msgs"] + 10
        second = [s for s in got if 10_001 <= s < 20_001]
        assert len(second) < BUDGET["device_burst_msgs"] / 2
        assert [s for s in got if s >= 20_001] == todo
    finally:
        sub.disconnect()
        sub.loop_stop()


# --- (b) $share ---------------------------------------------------------------------------

def test_device_cannot_join_a_shared_subscription_the_encoder_can(guarded: BrokerHandle) -> None:
    _skip_without_guard(guarded)
    dev = "gshare"
    pw = guarded.add_device(dev)
    # MQTT 3.1.1 device: SUBACK 0x80.
    raw = RawDevice(guarded, dev, pw)
    raw.subscribe("$share/encoders/cam/+/ready")
    deadline = time.monotonic() + 10
    while not raw.subacks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert raw.subacks == [b"\x80"]
    raw.close()
    # MQTT 5 device: Not authorized (0x87).
    holder: dict[str, Collector] = {}
    c = guarded.client(dev, pw, client_id=dev,
                       before_connect=lambda x: holder.update(col=Collector(x)))
    rcs = holder["col"].subscribe("$share/encoders/cam/+/ready")
    assert rcs[0].value == 0x87
    # The encoder's is granted and it gets every ready event.
    enc = guarded.client("encoder", client_id="encoder",
                         before_connect=lambda c: holder.update(enc=Collector(c)))
    assert holder["enc"].subscribe("$share/encoders/cam/+/ready")[0].value == 1
    ing = guarded.client("ingestor", client_id="ingestor")
    try:
        for i in range(10):
            ing.publish(f"cam/{dev}/ready", f'{{"n":{i}}}', qos=1).wait_for_publish(10)
        assert holder["enc"].wait_for(lambda ms: len(ms) >= 10, 10)
        assert len(holder["col"].messages) == 0
    finally:
        for x in (c, enc, ing):
            x.disconnect()
            x.loop_stop()


# --- (c) retained frames ----------------------------------------------------------------

def test_retained_frame_is_delivered_but_not_retained(guarded: BrokerHandle) -> None:
    _skip_without_guard(guarded)
    dev = "gretain"
    pw = guarded.add_device(dev)
    live, live_col = _subscriber(guarded, f"cam/{dev}/frame")
    c = guarded.client(dev, pw, client_id=dev)
    try:
        c.publish(f"cam/{dev}/frame", b"retained-frame", qos=1, retain=True).wait_for_publish(10)
        c.publish(f"cam/{dev}/status", b'{"state":"online"}', qos=1,
                  retain=True).wait_for_publish(10)
        assert live_col.wait_for(lambda ms: any(m.payload == b"retained-frame" for m in ms), 10)
        holder: dict[str, Collector] = {}
        late = guarded.client("operator", client_id="operator",
                              before_connect=lambda x: holder.update(col=Collector(x)))
        try:
            col = holder["col"]
            col.subscribe(f"cam/{dev}/frame")
            col.subscribe(f"cam/{dev}/status")
            assert col.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms), 10)
            assert col.topics() == [f"cam/{dev}/status"]
        finally:
            late.disconnect()
            late.loop_stop()
    finally:
        for x in (c, live):
            x.disconnect()
            x.loop_stop()


# --- (d) connection limits ----------------------------------------------------------------

def test_device_listener_full_still_lets_services_in(tmp_path: Path) -> None:
    """Sockets that never log in fill the device listener; services use the loopback one.

    Mosquitto 2.0.11 (Debian 12) miscounts ``max_connections`` (every closed connection
    frees two slots; fixed upstream in 2.0.12, commit 79542158), so the exact limit is
    not asserted here: only that the listener refuses past it while held sockets keep
    it full, and that a service still gets in (docs/security.md).
    """
    b = start_broker(tmp_path / "b", use_docker=False, tls_max_connections=10)
    idle: list[socket.socket] = []
    try:
        for _ in range(40):
            idle.append(socket.create_connection(("127.0.0.1", b.tls_port), timeout=5))
        # The listener closed the ones past its limit at once.
        closed = 0
        for s in idle:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed >= 40 - 10 - 2
        assert "denied: max_connections exceeded" in b.log_file.read_text(errors="replace")
        # A service connects on the loopback listener all the same.
        svc = b.client("ingestor", client_id="ingestor", tls=False)
        svc.disconnect()
        svc.loop_stop()
    finally:
        for s in idle:
            s.close()
        b.close()


def test_broker_gets_the_hard_open_file_limit() -> None:
    """``python -m broker run`` raises the soft descriptor limit to the hard one."""
    import resource  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import resource; from broker.run import raise_nofile_limit; "
            "s, h = raise_nofile_limit(0); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], h)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)))
    got_soft, got_hard = (int(x) for x in out.stdout.split())
    assert got_hard == hard
    assert got_soft == hard or hard == resource.RLIM_INFINITY


# --- (e) kick counters in $SYS ------------------------------------------------------------

def test_kicks_are_published_in_sys(guarded: BrokerHandle) -> None:
    _skip_without_guard(guarded)
    dev = "gsys"
    pw = guarded.add_device(dev)
    holder: dict[str, Collector] = {}
    op = guarded.client("operator", client_id="operator",
                        before_connect=lambda x: holder.update(col=Collector(x)))
    try:
        col = holder["col"]
        col.subscribe("$SYS/broker/camstack/guard/#", qos=0)
        raw = RawDevice(guarded, dev, pw)
        _flood(raw, f"cam/{dev}/frame", seconds=3.0)
        assert raw.closed.wait(10)
        raw.close()
        topic = f"$SYS/broker/camstack/guard/kicked/{dev}"
        assert col.wait_for(lambda ms: any(m.topic == topic and m.payload == b"1" for m in ms), 10)
        totals = [int(m.payload) for m in col.messages
                  if m.topic == "$SYS/broker/camstack/guard/kicks"]
        assert totals and totals[-1] >= 1
        # Retained: a newcomer reads the current counts at once.
        guarded.add_service("operator-late")
        late_holder: dict[str, Collector] = {}
        late = guarded.client("operator-late", client_id="operator-late",
                              before_connect=lambda x: late_holder.update(col=Collector(x)))
        try:
            late_holder["col"].subscribe(topic, qos=0)
            assert late_holder["col"].wait_for(bool, 10)
            assert late_holder["col"].messages[0].retain
        finally:
            late.disconnect()
            late.loop_stop()
    finally:
        op.disconnect()
        op.loop_stop()
