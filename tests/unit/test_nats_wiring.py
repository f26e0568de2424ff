"""The NATS engine's wiring into the services and tools (issue 17): pure checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import bcrypt
import pytest
from pydantic import ValidationError

from broker.accounts import AccountStore
from broker.cluster import (
    accounts_without_hash,
    broker_pid_files,
    cluster_nodes,
    mqtt_ports,
    write_cluster,
)
from broker.layout import Layout
from camstack.stack import nats_service_documents, render_local, write_documents
from camstack.supervise import local_jetstream_port, render_supervisord
from camstack.systemd import render_units, systemd_version, write_units
from config.loader import to_toml
from config.settings import (
    BrokerSettings,
    EncoderSettings,
    IngestorSettings,
    MonitorSettings,
    MqttSettings,
    NatsClusterSettings,
)
from ingestor.leases import Holder, refusal
from monitor.service import broker_sys_topics


def _s3() -> dict[str, object]:
    return {"backend": "s3", "s3": {"bucket": "camstack", "endpoint_url": "http://127.0.0.1:1"}}


def test_encoder_refuses_the_mqtt_runner_on_3_1_1() -> None:
    with pytest.raises(ValidationError, match=r"\$share.*runner = \"jetstream\""):
        EncoderSettings(mqtt=MqttSettings(protocol="3.1.1"))
    ok = EncoderSettings(mqtt=MqttSettings(protocol="3.1.1"), runner="jetstream",
                         store=_s3())
    assert ok.runner == "jetstream"
    assert EncoderSettings().runner == "mqtt"  # MQTT 5 unchanged


def test_monitor_follows_no_sys_on_3_1_1() -> None:
    assert broker_sys_topics(MqttSettings(protocol="3.1.1")) == ()
    assert "$SYS/broker/publish/messages/dropped" in broker_sys_topics(MqttSettings())


def _nats_settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(data_dir=tmp_path / "data", engine="nats",
                          nats=NatsClusterSettings(nodes=3, mqtt_port_base=18883))


def test_supervisord_runs_one_program_per_node_instead_of_mosquitto(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    text = render_supervisord(layout, python="/py", cluster_nodes=3)
    programs = re.findall(r"^\[program:(.+)\]$", text, re.M)
    assert programs == ["nats-node-0", "nats-node-1", "nats-node-2", "ingestor", "encoder",
                        "monitor", "web"]
    block = text.split("[program:nats-node-1]")[1].split("[program:")[0]
    assert f"command=/py -m broker --data-dir {layout.data_dir} run --node 1" in block
    assert "priority=10" in block and "CAM_CONFIG" not in block
    assert "[program:broker]" in render_supervisord(layout, python="/py")  # default kept


def test_supervisord_runs_the_guard_with_the_nodes(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    text = render_supervisord(layout, python="/py", cluster_nodes=3, guard=True,
                              broker_config=tmp_path / "broker.toml")
    programs = re.findall(r"^\[program:(.+)\]$", text, re.M)
    assert programs[:4] == ["nats-node-0", "nats-node-1", "nats-node-2", "nats-guard"]
    block = text.split("[program:nats-guard]")[1].split("[program:")[0]
    assert (f"command=/py -m natsguard --config {tmp_path / 'broker.toml'} --data-dir "
            f"{layout.data_dir}\n") in block
    # Stopped after the services (20..50), before the nodes (10); the broker's settings.
    assert "priority=12" in block and "CAM_CONFIG" not in block
    assert "nats-guard" not in render_supervisord(layout, python="/py", guard=True)


def test_pid_files_one_per_node(tmp_path: Path) -> None:
    s = _nats_settings(tmp_path)
    layout = Layout(s.data_dir)
    assert broker_pid_files(s, layout) == [
        s.data_dir / "nats" / f"node-{i}" / "nats.pid" for i in range(3)]
    assert broker_pid_files(BrokerSettings(data_dir=s.data_dir), layout) == [
        s.data_dir / "broker" / "mosquitto.pid"]
    assert mqtt_ports(s) == [18883, 18884, 18885]


def test_nats_service_documents(tmp_path: Path) -> None:
    s = _nats_settings(tmp_path)
    layout = Layout(s.data_dir)
    docs = nats_service_documents(s, layout, ingestors=[("ingestor-a", list(range(32))),
                                                        ("ingestor-b", list(range(32, 64)))])
    assert {d["mqtt"]["protocol"] for d in docs.values()} == {"3.1.1"}
    assert all(d["mqtt"]["tls"]["enabled"] for d in docs.values())
    assert docs["ingestor-a"]["ingest"]["partitions"] == list(range(32))
    assert docs["ingestor-b"]["mqtt"]["port"] == 18884
    assert docs["ingestor-b"]["mqtt"]["password_file"].endswith("ingestor-b.pass")
    assert docs["encoder"]["mqtt"]["port"] == 18884
    assert docs["monitor"]["mqtt"]["port"] == 18885
    assert docs["encoder"]["runner"] == "jetstream"
    s3 = {"store": _s3()}
    IngestorSettings(**{**docs["ingestor-a"], **s3})
    EncoderSettings(**{**docs["encoder"], **s3})
    MonitorSettings(**docs["monitor"])
    one = nats_service_documents(s, layout)
    assert one["ingestor"]["ingest"]["partitions"] == list(range(64))
    # The job queue is the cluster: every node's client port, each service its own
    # account and password, the stream replicated like the MQTT streams.
    nodes = [f"nats://127.0.0.1:{s.nats.port_base + 10 * i}" for i in range(3)]
    for name in ("ingestor-a", "ingestor-b", "encoder"):
        jq = docs[name]["jobqueue"]
        assert jq["servers"] == nodes and jq["user"] == name and jq["replicas"] == 3
        assert jq["password_file"] == docs[name]["mqtt"]["password_file"]
    assert one["ingestor"]["jobqueue"]["user"] == "ingestor"
    assert docs["ingestor-b"]["leases"] == {"enabled": True}
    assert IngestorSettings(**{**docs["ingestor-b"], **s3}).leases.enabled
    assert "jobqueue" not in docs["monitor"] and "jobqueue" not in docs["web"]
    enc = EncoderSettings(**{**docs["encoder"], **s3})
    assert enc.jobqueue.user == "encoder" and enc.jobqueue.replicas == 3


def test_make_up_runs_no_separate_nats_for_jobs_on_the_cluster(tmp_path: Path) -> None:
    s = _nats_settings(tmp_path)
    layout = Layout(s.data_dir)
    write_documents(nats_service_documents(s, layout), layout.data_dir / "config")
    ports = [n.client_port for n in cluster_nodes(s, layout)]
    assert local_jetstream_port(layout, ports) is None
    assert local_jetstream_port(layout) == s.nats.port_base  # else a second server there


def test_old_service_accounts_are_rehashed_from_their_password_file(tmp_path: Path) -> None:
    s = _nats_settings(tmp_path)
    layout = Layout(s.data_dir)
    layout.secrets_dir.mkdir(parents=True)
    store = AccountStore(layout.broker_dir, "cam")
    pw = store.add("encoder-old", "service")
    layout.service_password_file("encoder-old").write_text(pw + "\n")
    store.add("olddev", "device")
    # As an older camstack wrote them: Mosquitto's hash only.
    raw = json.loads((layout.broker_dir / "accounts.json").read_text())
    for acc in (raw.values() if isinstance(raw, dict) else raw):
        if isinstance(acc, dict) and acc.get("name") in ("encoder-old", "olddev"):
            acc["nats_hash"] = None
    (layout.broker_dir / "accounts.json").write_text(json.dumps(raw))
    assert {"encoder-old", "olddev"} <= set(accounts_without_hash(store))
    write_cluster(s, layout)
    assert "encoder-old" not in accounts_without_hash(store)
    assert "olddev" in accounts_without_hash(store)
    new = next(a for a in store.list() if a.name == "encoder-old")
    assert new.nats_hash and bcrypt.checkpw(pw.encode(), new.nats_hash.encode())
    text = store.nats_accounts.read_text()
    assert "encoder-old" in text and "olddev" not in text
    assert (s.data_dir / "nats" / "node-2" / "nats.conf").exists()


def test_systemd_one_unit_per_node(tmp_path: Path) -> None:
    units = render_units(Path("/srv/camstack"), python="/opt/cs/bin/python", cluster_nodes=3,
                         guard=True)
    assert "camstack-broker.service" not in units
    guard = units["camstack-nats-guard.service"]
    assert "ExecStart=/opt/cs/bin/python -m natsguard --data-dir /srv/camstack\n" in guard
    assert "After=network-online.target camstack-nats-node-0.service" in guard
    assert "camstack-nats-guard.service" not in render_units(
        Path("/srv/camstack"), cluster_nodes=3)
    assert "camstack-nats-guard.service" not in render_units(Path("/srv/camstack"), guard=True)
    node = units["camstack-nats-node-2.service"]
    assert "ExecStart=/opt/cs/bin/python -m broker --data-dir /srv/camstack run --node 2" in node
    assert "ReadWritePaths=/srv/camstack" in node and "After=network-online.target\n" in node
    nodes = " ".join(f"camstack-nats-node-{i}.service" for i in range(3))
    assert f"After=network-online.target {nodes}" in units["camstack-ingestor.service"]
    assert (f"Wants={nodes} camstack-nats-guard.service camstack-ingestor.service"
            in units["camstack.target"])
    if shutil.which("systemd-analyze") is not None:
        version = systemd_version()
        files = write_units(render_units(
            tmp_path / "data", cluster_nodes=3, guard=True,
            restart_steps=version is None or version >= 254), tmp_path / "units")
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, files)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_a_lease_refusal_names_each_holder_and_its_partitions() -> None:
    a = Holder("ingestor-a", "i1", "hostA", 0)
    b = Holder("ingestor-b", "i2", "hostB", 3_600_000)
    text = refusal({5: a, 4: a, 9: b})
    assert text == ("partitions 4, 5 are held by ingestor-a (host hostA, since 00:00:00 "
                    "UTC); partition 9 is held by ingestor-b (host hostB, since 01:00:00 UTC)")
    assert Holder.parse(a.to_json()) == a
    assert Holder.parse(b"not json").owner == "<unreadable lease>"  # never taken for ours


def test_a_new_install_gets_one_filter_an_existing_config_keeps_its_shape(
        tmp_path: Path) -> None:
    s = _nats_settings(tmp_path)
    layout = Layout(s.data_dir)
    render_local(s)
    ing = layout.data_dir / "config" / "ingestor.toml"
    doc = tomllib.loads(ing.read_text())
    assert doc["ingest"]["one_filter"] is True
    IngestorSettings(**{**doc, "store": _s3()})
    # An install made before: its session has 64 filters; a re-render must not switch it.
    doc["ingest"].pop("one_filter")
    ing.write_text(to_toml(doc))
    render_local(s, force=True)
    assert "one_filter" not in tomllib.loads(ing.read_text())["ingest"]
