"""The refusals of docs/security.md that test_broker_security.py did not prove yet, each
against the real Mosquitto with the project's configuration.

(docs/security.md, "Tests", maps every refusal to its test in either file.)
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.accounts import SERVICES
from broker.run import prepare
from camstack.brokerproc import BrokerHandle
from camstack.mqttwait import Collector
from mqttclient import MqttConnectError

pytestmark = pytest.mark.integration


def uid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def watcher(broker: BrokerHandle) -> Iterator[Collector]:
    """An operator reading everything (``#``)."""
    name = f"operator-w{uid()}"
    broker.add_service(name)
    c = broker.client(name, client_id=name)
    col = Collector(c)
    col.subscribe("#")
    yield col
    c.disconnect()
    c.loop_stop()


def published_through(watcher: Collector, client: mqtt.Client, topics: list[str],
                      sentinel: str) -> set[str]:
    """Publish on every topic, then on an allowed ``sentinel``; return what arrived.

    The broker delivers one client's messages to a subscriber in order, so once the
    sentinel is there everything that was let through is there too.
    """
    with watcher.lock:
        watcher.messages.clear()
    for t in topics:
        client.publish(t, b"{}", qos=1).wait_for_publish(5)
    client.publish(sentinel, b"{}", qos=1).wait_for_publish(5)
    assert watcher.wait_for(lambda ms: any(m.topic == sentinel for m in ms), 10), sentinel
    return set(watcher.topics()) - {sentinel}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 on purpose
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused_by_the_broker(broker: BrokerHandle,
                                                version: ssl.TLSVersion) -> None:
    def handshake(maximum: ssl.TLSVersion) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(broker.ca_file))
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        with (socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
              ctx.wrap_socket(raw, server_hostname="localhost") as tls):
            return str(tls.version())

    # The same client does get through with TLS 1.2: the refusal is the broker's.
    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        handshake(version)


def test_unknown_account_refused(broker: BrokerHandle) -> None:
    with pytest.raises(MqttConnectError, match="refused"):
        broker.client(f"nobody{uid()}", "whatever")


def _non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
        addr: str = s.getsockname()[0]
        if not addr.startswith("127."):
            return addr
    return None


def test_plain_listener_refuses_connections_from_off_the_machine(broker: BrokerHandle) -> None:
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((addr, broker.local_port), timeout=5).close()
    # The TLS listener, on all interfaces, answers on that address.
    socket.create_connection((addr, broker.tls_port), timeout=5).close()


def test_device_cannot_publish_commands_service_topics_or_alerts(
        broker: BrokerHandle, watcher: Collector) -> None:
    dev, other = f"secc{uid()}", f"secd{uid()}"
    pw = broker.add_device(dev)
    broker.add_device(other)
    c = broker.client(dev, pw, client_id=dev)
    try:
        forbidden = [f"cam/{dev}/cmd", f"cam/{other}/cmd", f"cam/{dev}/extra",
                     f"cam/{dev}", "svc/ingestor/status", f"svc/{dev}/status",
                     "alerts/device_offline/x", "$SYS/broker/x", "other/topic"]
        got = published_through(watcher, c, forbidden, f"cam/{dev}/status")
    finally:
        c.disconnect()
        c.loop_stop()
    assert got == set()


@pytest.mark.parametrize("role", ["ingestor", "encoder", "operator"])
def test_each_service_role_publishes_only_its_own_topics(
        broker: BrokerHandle, watcher: Collector, role: str) -> None:
    name, other = f"{role}-s{uid()}", f"{role}-o{uid()}"
    broker.add_service(name)
    dev = f"secs{uid()}"
    allowed = {
        "ingestor": {f"cam/{dev}/ready", f"svc/{name}/status"},
        "encoder": {f"cam/{dev}/video", f"svc/{name}/status"},
        "operator": {f"cam/{dev}/cmd", f"svc/{name}/status", "alerts/r/s"},
    }[role]
    topics = [f"cam/{dev}/frame", f"cam/{dev}/status", f"cam/{dev}/cmd", f"cam/{dev}/ready",
              f"cam/{dev}/video", f"svc/{name}/status", f"svc/{other}/status",
              "svc/ingestor/status", "alerts/r/s", "x/y"]
    c = broker.client(name, client_id=name)
    try:
        got = published_through(watcher, c, topics, f"svc/{name}/sentinel")
    finally:
        c.disconnect()
        c.loop_stop()
    assert got == allowed


def test_queue_of_an_offline_session_is_bounded(tmp_path: Path) -> None:
    # max_queued_messages, here lowered to 20 so the bound shows with few messages.
    h = BrokerHandle(data_dir=tmp_path / "b", use_docker=False)
    h.settings = h.settings.model_copy(update={"max_queued_messages": 20})
    h.layout = prepare(h.settings)
    assert "max_queued_messages 20" in h.layout.conf_file.read_text()
    h.start()
    try:
        name = f"ingestor-q{uid()}"
        h.add_service(name)
        sub = h.client(name, client_id=name, clean_start=False)
        Collector(sub).subscribe("cam/+/frame")
        sub.disconnect()
        sub.loop_stop()
        dev = f"secq{uid()}"
        pw = h.add_device(dev)
        d = h.client(dev, pw, client_id=dev)
        for i in range(100):
            d.publish(f"cam/{dev}/frame", b"%d" % i, qos=1).wait_for_publish(5)
        d.disconnect()
        d.loop_stop()
        cols: list[Collector] = []
        sub = h.client(name, client_id=name, clean_start=False,
                       before_connect=lambda c: cols.append(Collector(c)))
        assert cols[0].wait_for(lambda ms: len(ms) >= 20, 10)
        time.sleep(1.0)
        got = [int(m.payload) for m in cols[0].messages]
        sub.disconnect()
        sub.loop_stop()
    finally:
        h.close()
    assert len(got) == 20 and got == list(range(20))  # the rest was not queued


def test_service_password_files_are_readable_by_their_owner_only(broker: BrokerHandle) -> None:
    for name in SERVICES:
        path = broker.layout.service_password_file(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_security_doc_lists_only_tests_that_exist() -> None:
    # docs/security.md maps each refusal to its tests: a renamed test must not leave a
    # dangling name there.
    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "security.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", doc.split("## Tests", 1)[1]))
    defined = {m for p in (repo / "tests").rglob("test_*.py")
               for m in re.findall(r"^def (test_\w+)", p.read_text(), re.MULTILINE)}
    assert named and named <= defined, named - defined
