"""The broker's security rules, proved against the real Mosquitto with the project config."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from broker.pki import PkiPaths, create_ca
from camstack.brokerproc import BrokerHandle
from camstack.mqttwait import Collector, disconnected_event
from mqttclient import MqttConnectError, make_client

pytestmark = pytest.mark.integration


def test_device_with_right_password_connects_over_tls(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-ok")
    c = broker.client("sec-ok", pw, client_id="sec-ok")
    c.disconnect()
    c.loop_stop()


def test_anonymous_refused(broker: BrokerHandle) -> None:
    s = broker.mqtt_settings("", "")
    c = make_client(s, client_id="anon")
    from mqttclient.client import connect_blocking  # noqa: PLC0415

    with pytest.raises(MqttConnectError, match="refused"):
        connect_blocking(c, s)


def test_wrong_password_refused(broker: BrokerHandle) -> None:
    broker.add_device("sec-wrongpw")
    with pytest.raises(MqttConnectError, match="refused"):
        broker.client("sec-wrongpw", "not-the-password")


def test_anonymous_refused_on_local_plain_listener(broker: BrokerHandle) -> None:
    with pytest.raises(MqttConnectError, match="refused"):
        broker.client("", "", tls=False)


def test_plain_tcp_refused_on_device_listener(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-plain")
    with pytest.raises(MqttConnectError):
        broker.client("sec-plain", pw, tls=False, port=broker.tls_port, timeout=2)


def test_local_listener_is_loopback_only(broker: BrokerHandle) -> None:
    conf = broker.layout.conf_file.read_text()
    assert f"listener {broker.local_port} 127.0.0.1" in conf
    assert f"listener {broker.tls_port} 0.0.0.0" in conf


def test_tls_with_wrong_ca_refused(broker: BrokerHandle, tmp_path: Path) -> None:
    other = PkiPaths(tmp_path / "other")
    create_ca(other, cn="someone else")
    ctx = ssl.create_default_context(cafile=str(other.ca_cert))
    with (socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
          pytest.raises(ssl.SSLCertVerificationError)):
        ctx.wrap_socket(raw, server_hostname="localhost").close()


def test_server_certificate_verifies_with_project_ca(broker: BrokerHandle) -> None:
    ctx = ssl.create_default_context(cafile=str(broker.ca_file))
    with (socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
          ctx.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


def test_device_cannot_publish_as_another_device(broker: BrokerHandle) -> None:
    pw_a = broker.add_device("sec-a")
    broker.add_device("sec-b")
    watcher = broker.client("operator")
    col = Collector(watcher)
    col.subscribe("cam/#")
    dev = broker.client("sec-a", pw_a, client_id="sec-a")
    dev.publish("cam/sec-b/frame", b"forged", qos=1).wait_for_publish(5)
    dev.publish("cam/sec-a/frame", b"own", qos=1).wait_for_publish(5)
    # One client's messages reach a subscriber in order: once "own" is here, the forged
    # one (published before it) would have been too.
    assert col.wait_for(lambda ms: any(m.topic == "cam/sec-a/frame" for m in ms))
    assert "cam/sec-b/frame" not in col.topics()
    for c in (dev, watcher):
        c.disconnect()
        c.loop_stop()


def test_device_cannot_read_other_devices_topics(broker: BrokerHandle) -> None:
    # Mosquitto 2.0 grants a wildcard SUBSCRIBE and then filters every delivery through
    # the read ACL; what matters is that nothing of another device ever arrives.
    pw = broker.add_device("sec-sub")
    other_pw = broker.add_device("sec-sub2")
    dev = broker.client("sec-sub", pw, client_id="sec-sub")
    col = Collector(dev)
    for topic in ("cam/#", "cam/+/frame", "cam/sec-sub2/cmd", "#"):
        col.subscribe(topic)
    other = broker.client("sec-sub2", other_pw, client_id="sec-sub2")
    other.publish("cam/sec-sub2/frame", b"frame", qos=1).wait_for_publish(5)
    other.publish("cam/sec-sub2/status", b"{}", qos=1).wait_for_publish(5)
    op = broker.client("operator")
    op.publish("cam/sec-sub2/cmd", b"{}", qos=1).wait_for_publish(5)
    op.publish("cam/sec-sub/cmd", b'{"cmd":"reboot"}', qos=1).wait_for_publish(5)
    # Each publish above was PUBACKed before the next: the broker routed them in this
    # order, so the device's own command, routed last, arrives after anything else would.
    assert col.wait_for(lambda ms: "cam/sec-sub/cmd" in [m.topic for m in ms])
    assert set(col.topics()) == {"cam/sec-sub/cmd"}
    for c in (dev, other, op):
        c.disconnect()
        c.loop_stop()


def test_device_receives_only_its_own_commands(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-cmd")
    dev = broker.client("sec-cmd", pw, client_id="sec-cmd")
    col = Collector(dev)
    col.subscribe("cam/sec-cmd/cmd")
    op = broker.client("operator")
    op.publish("cam/sec-cmd/cmd", b'{"cmd":"reboot"}', qos=1).wait_for_publish(5)
    assert col.wait_for(lambda ms: len(ms) == 1)
    for c in (dev, op):
        c.disconnect()
        c.loop_stop()


def test_device_cannot_publish_ready_or_video(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-evt")
    watcher = broker.client("operator")
    col = Collector(watcher)
    col.subscribe("cam/sec-evt/#")
    dev = broker.client("sec-evt", pw, client_id="sec-evt")
    dev.publish("cam/sec-evt/ready", b"{}", qos=1).wait_for_publish(5)
    dev.publish("cam/sec-evt/video", b"{}", qos=1).wait_for_publish(5)
    dev.publish("cam/sec-evt/status", b'{"state":"online"}', qos=1).wait_for_publish(5)
    # Published last by the same client: the refused two would have come before it.
    assert col.wait_for(lambda ms: any(m.topic.endswith("/status") for m in ms))
    assert col.topics() == ["cam/sec-evt/status"]
    for c in (dev, watcher):
        c.disconnect()
        c.loop_stop()


def test_revoked_device_is_cut_off_and_refused(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-rev")
    other_pw = broker.add_device("sec-stay")
    dev = broker.client("sec-rev", pw, client_id="sec-rev")
    gone = disconnected_event(dev)
    stay = broker.client("sec-stay", other_pw, client_id="sec-stay")
    stayed = disconnected_event(stay)
    broker.revoke("sec-rev")
    assert gone.wait(5), "revoked device still connected after reload"
    dev.loop_stop()
    with pytest.raises(MqttConnectError, match="refused"):
        broker.client("sec-rev", pw)
    assert not stayed.is_set(), "reload disconnected an innocent client"
    stay.disconnect()
    stay.loop_stop()


def test_device_cannot_take_over_a_service_session(broker: BrokerHandle) -> None:
    # Without use_username_as_clientid a device connecting with client id "ingestor"
    # takes over the ingestor's persistent session and its queued frames are lost.
    pw = broker.add_device("sec-cid")
    ing = broker.client("ingestor", client_id="ingestor", clean_start=False)
    Collector(ing).subscribe("cam/+/frame")
    ing.disconnect()
    ing.loop_stop()
    dev = broker.client("sec-cid", pw, client_id="sec-cid")
    for i in range(3):
        dev.publish("cam/sec-cid/frame", b"chunk%d" % i, qos=1).wait_for_publish(5)
    dev.disconnect()
    dev.loop_stop()
    cols: list[Collector] = []
    spoof = broker.client("sec-cid", pw, client_id="ingestor", clean_start=False,
                          before_connect=lambda c: cols.append(Collector(c)))
    ing = broker.client("ingestor", client_id="ingestor", clean_start=False,
                        before_connect=lambda c: cols.append(Collector(c)))
    spoof_col, col = cols
    # The three queued chunks are delivered once, to the session that holds them: the
    # ingestor getting all three proves the spoof never had its session.
    assert col.wait_for(lambda ms: len(ms) >= 3), col.topics()
    assert spoof_col.topics() == []
    for c in (spoof, ing):
        c.disconnect()
        c.loop_stop()


def test_oversized_packet_refused(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-big")
    dev = broker.client("sec-big", pw, client_id="sec-big")
    gone = disconnected_event(dev)
    watcher = broker.client("operator")
    col = Collector(watcher)
    col.subscribe("cam/sec-big/frame")
    dev.publish("cam/sec-big/frame", b"x" * (broker.settings.max_packet_bytes + 1), qos=1)
    assert gone.wait(5), "broker accepted a packet over max_packet_size"
    dev.loop_stop()
    # A small frame from the same device afterwards arrives alone: the big one never did.
    dev = broker.client("sec-big", pw, client_id="sec-big")
    dev.publish("cam/sec-big/frame", b"small", qos=1).wait_for_publish(5)
    assert col.wait_for(lambda ms: len(ms) >= 1)
    assert [m.payload for m in col.messages] == [b"small"]
    dev.disconnect()
    dev.loop_stop()
    watcher.disconnect()
    watcher.loop_stop()


def test_services_have_least_rights(broker: BrokerHandle) -> None:
    pw = broker.add_device("sec-least")
    enc = broker.client("encoder")
    enc_col = Collector(enc)
    for topic in ("cam/+/frame", "cam/+/cmd", "$share/encoders/cam/+/ready"):
        enc_col.subscribe(topic)
    ing = broker.client("ingestor")
    ing_col = Collector(ing)
    for topic in ("cam/+/frame", "cam/+/cmd", "cam/+/status"):
        ing_col.subscribe(topic)
    dev = broker.client("sec-least", pw)
    dev.publish("cam/sec-least/frame", b"f", qos=1).wait_for_publish(5)
    dev.publish("cam/sec-least/status", b"{}", qos=1).wait_for_publish(5)
    op = broker.client("operator")
    op.publish("cam/sec-least/cmd", b"{}", qos=1).wait_for_publish(5)
    ing.publish("cam/sec-least/ready", b"{}", qos=1).wait_for_publish(5)
    ing.publish("cam/sec-least/cmd", b"{}", qos=1).wait_for_publish(5)  # denied: dropped
    # Sentinels routed after everything above (each publish was PUBACKed in turn): once
    # they are in, anything the ACL let through would be in too.
    ing.publish("cam/sec-least/ready", b"last", qos=1).wait_for_publish(5)
    dev.publish("cam/sec-least/frame", b"last", qos=1).wait_for_publish(5)
    assert enc_col.wait_for(lambda ms: b"last" in [m.payload for m in ms])
    assert ing_col.wait_for(lambda ms: b"last" in [m.payload for m in ms])
    assert enc_col.topics() == ["cam/sec-least/ready"] * 2
    assert ing_col.topics() == ["cam/sec-least/frame"] * 2
    for c in (enc, ing, dev, op):
        c.disconnect()
        c.loop_stop()


def test_mosquitto_sub_line_from_readme_works(broker: BrokerHandle) -> None:
    out = subprocess.run(
        ["mosquitto_sub", "-h", "localhost", "-p", str(broker.tls_port), "--cafile",
         str(broker.ca_file), "-u", "operator", "-P", broker.service_password("operator"),
         "-t", "svc/#", "-W", "1", "-v"],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert "Connection Refused" not in out.stderr and "Error" not in out.stderr, out.stderr
