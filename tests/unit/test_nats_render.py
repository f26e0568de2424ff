"""The NATS cluster engine: settings, partitions and config rendering (pure, plus
``nats-server -t`` on the rendered files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bcrypt
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from broker.accounts import Account, AccountStore
from broker.natscluster import (
    Permissions,
    TlsFiles,
    account_permissions,
    filter_subjects,
    frame_mapping,
    job_permissions,
    plan_nodes,
    render_accounts,
    render_node_config,
)
from broker.pki import PkiPaths, create_ca, create_server_cert
from camstack.servers import nats_server_binary
from config.settings import (
    BrokerSettings,
    IngestorSettings,
    JobQueueSettings,
    LeaseSettings,
    MqttSettings,
    nats_inbox_prefix,
)
from contract.ids import DEVICE_ID_RE
from contract.partition import (
    all_partitions_frame_filter,
    device_partition,
    fnv1a_32,
    parse_partition_frame_topic,
    partition_frame_filter,
    partition_frame_topic,
)
from mqttclient import connect_blocking, make_client, session_client_id

ids = st.from_regex(DEVICE_ID_RE, fullmatch=True)


def test_settings_defaults_and_bounds() -> None:
    b = BrokerSettings()
    assert b.engine == "mosquitto"
    assert (b.nats.nodes, b.nats.partitions, b.nats.replicas) == (3, 64, 3)
    assert BrokerSettings(nats={"nodes": 1}).nats.replicas == 1
    for bad in ({"nodes": 0}, {"nodes": 8}, {"nodes": 2, "stream_replicas": 3},
                {"partitions": 32}, {"max_ack_pending": 1025}, {"mqtt_port_base": 14221},
                {"extra": 1}):
        with pytest.raises(ValidationError):
            BrokerSettings(nats=bad)
    with pytest.raises(ValidationError):
        BrokerSettings(engine="emqx")


def test_fnv1a_known_vectors() -> None:
    # Published FNV-1a 32 test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968
    # What nats-server 2.15.1 computed for these ids (server log, this machine).
    assert device_partition("cam01") == 63
    assert device_partition("cam02") == 18


@given(ids)
def test_partition_topic_round_trip(device: str) -> None:
    n = device_partition(device)
    assert 0 <= n < 64
    topic = partition_frame_topic("cam", n, device)
    assert parse_partition_frame_topic(topic, "cam") == (n, device)
    # Another partition, another prefix, a bad id or shape: refused.
    assert parse_partition_frame_topic(partition_frame_topic("cam", (n + 1) % 64, device),
                                       "cam") is None
    assert parse_partition_frame_topic(topic, "other") is None
    assert parse_partition_frame_topic(topic + "/x", "cam") is None
    assert parse_partition_frame_topic(f"p/0{n}/cam/{device}/frame", "cam") is None


def test_partition_filter_and_bad_numbers() -> None:
    assert partition_frame_filter("cam", 7) == "p/7/cam/+/frame"
    assert all_partitions_frame_filter("cam") == "p/+/cam/+/frame"
    for bad in ("p/²/cam/cam01/frame", "p/-1/cam/cam01/frame", "p//cam/cam01/frame",
                "p/63/cam/ca.m/frame", "q/63/cam/cam01/frame", "p/63/cam/cam01/status"):
        assert parse_partition_frame_topic(bad, "cam") is None


def test_one_filter_needs_every_partition_and_no_handoff() -> None:
    every = list(range(64))
    assert IngestorSettings(ingest={"partitions": every, "one_filter": True}).ingest.one_filter
    handoff = {"role": "release", "partitions": [3], "at_ms": 1}
    for bad in ({"partitions": every[:-1]}, {}, {"partitions": every, "handoff": handoff}):
        with pytest.raises(ValidationError, match="one_filter needs"):
            IngestorSettings(ingest={**bad, "one_filter": True})


def test_filter_subjects() -> None:
    assert filter_subjects("cam/+/frame") == ["cam.*.frame"]
    assert filter_subjects("svc/ingestor/#") == ["svc.ingestor", "svc.ingestor.>"]
    assert filter_subjects("#") == [">"]
    for bad in ("a/b.c", "a//b", "a/b c"):
        with pytest.raises(ValueError, match="no NATS subject form"):
            filter_subjects(bad)


def test_frame_mapping_text() -> None:
    assert frame_mapping("cam") == (
        "cam.*.frame", "p.{{partition(64,1)}}.cam.{{wildcard(1)}}.frame")


def _acc(name: str, kind: str = "device", *, revoked: str | None = None,
         nats_hash: str | None = "$2b$10$" + "x" * 53) -> Account:
    return Account(name=name, kind=kind, pw_hash="$7$x", created="now",  # type: ignore[arg-type]
                   revoked=revoked, nats_hash=nats_hash)


@given(ids.filter(lambda d: not d.startswith(("ingestor", "encoder", "operator"))))
@settings(max_examples=50)
def test_device_rights_are_its_own_mapped_subjects(device: str) -> None:
    perms = account_permissions(_acc(device), "cam")
    assert perms is not None
    n = device_partition(device)
    assert perms.publish == [f"p.{n}.cam.{device}.frame", f"cam.{device}.status"]
    assert perms.subscribe == [f"cam.{device}.cmd"]


def test_service_rights_mirror_the_acl() -> None:
    ing = account_permissions(_acc("ingestor", "service"), "cam")
    assert ing is not None
    assert ing.subscribe == ["p.*.cam.*.frame", "svc.ingestor", "svc.ingestor.>"]
    assert ing.publish == ["cam.*.ready", "svc.ingestor", "svc.ingestor.>"]
    enc = account_permissions(_acc("encoder-2", "service"), "cam")
    assert enc is not None
    assert enc.subscribe == ["cam.*.ready", "svc.encoder-2", "svc.encoder-2.>"]
    assert enc.publish == ["cam.*.video", "svc.encoder-2", "svc.encoder-2.>"]
    op = account_permissions(_acc("operator", "service"), "cam")
    assert op is not None
    assert ">" in op.subscribe and not any(s.startswith("$") for s in op.subscribe)
    assert "cam.*.cmd" in op.publish and "p.*.cam.*.frame" not in op.publish
    assert account_permissions(_acc("stranger", "service"), "cam") is None


def test_render_accounts_leaves_out_revoked_and_unhashed() -> None:
    text, missing = render_accounts(
        [_acc("cam01"), _acc("cam02", revoked="then"), _acc("cam03", nats_hash=None),
         _acc("ingestor", "service")], "cam")
    assert missing == ["cam03"]
    assert '"cam01"' in text and '"ingestor"' in text
    assert "cam02" not in text and "cam03" not in text
    assert '"cam.*.frame": "p.{{partition(64,1)}}.cam.{{wildcard(1)}}.frame"' in text
    assert "$7$" not in text  # Mosquitto's hashes never go there


def _users(text: str) -> dict[str, str]:
    """Each rendered user's block of the accounts file, by name."""
    blocks = text.split("{user: ")[1:]
    return {b.split('"')[1]: b for b in blocks}


def test_job_queue_services_also_log_in_over_nats_with_job_rights_only() -> None:
    jobs = JobQueueSettings(stream="JOBS", consumer="workers", subject_prefix="j.enc")
    text, _ = render_accounts(
        [_acc("cam01"), _acc("ingestor", "service"), _acc("ingestor-b", "service"),
         _acc("encoder-2", "service"), _acc("operator", "service")], "cam", jobs=jobs)
    users = _users(text)
    for name in ("cam01", "operator"):  # nothing new: MQTT only, no job subject
        assert 'allowed_connection_types: ["MQTT"]' in users[name]
        assert "$JS" not in users[name] and "j.enc" not in users[name]
        assert "_INBOX" not in users[name]
    for name in ("ingestor", "ingestor-b", "encoder-2"):
        assert 'allowed_connection_types: ["MQTT", "STANDARD"]' in users[name]
    ing = account_permissions(_acc("ingestor-b", "service"), "cam")
    assert ing is not None
    assert job_permissions("ingestor", "ingestor-b", jobs) == Permissions(
        publish=["$JS.API.STREAM.INFO.JOBS", "$JS.API.STREAM.CREATE.JOBS",
                 "$JS.API.STREAM.UPDATE.JOBS", "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers",
                 "j.enc.>", "$JS.API.STREAM.INFO.KV_camstack_partitions",
                 "$JS.API.STREAM.CREATE.KV_camstack_partitions",
                 "$JS.API.STREAM.MSG.GET.KV_camstack_partitions", "$KV.camstack_partitions.>"],
        subscribe=["_INBOX.ingestor-b.>"])
    enc = job_permissions("encoder", "encoder-2", jobs)
    assert "j.enc.>" not in enc.publish  # an encoder publishes no job, holds no lease
    assert not any("KV" in p for p in enc.publish)
    assert enc.publish[4:] == ["$JS.API.CONSUMER.INFO.JOBS.workers",
                               "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers", "$JS.ACK.JOBS.workers.>"]
    # The MQTT rights stay, the job rights come after them.
    assert '"p.*.cam.*.frame"' in users["ingestor-b"] and '"j.enc.>"' in users["ingestor-b"]
    assert '"_INBOX.encoder-2.>"' in users["encoder-2"]
    # The default [jobqueue] names when none are given.
    default, _ = render_accounts([_acc("encoder", "service")], "cam")
    assert '"$JS.API.CONSUMER.MSG.NEXT.CAMSTACK_JOBS.encoders"' in default


def test_jobqueue_user_and_password_file_settings(tmp_path: Path) -> None:
    pw = tmp_path / "enc.pass"
    pw.write_text("s3cret\n")
    s = JobQueueSettings(user="encoder-2", password_file=pw, replicas=3)
    assert s.resolved_password() == "s3cret" and s.replicas == 3
    assert JobQueueSettings().resolved_password() == ""
    assert nats_inbox_prefix("encoder-2") == "_INBOX.encoder-2"
    assert nats_inbox_prefix("") == "_INBOX"
    assert LeaseSettings(ttl_s=3, refresh_s=1).enabled is False
    with pytest.raises(ValidationError):
        LeaseSettings(ttl_s=10, refresh_s=5)  # a refresh must fit twice in the ttl
    with pytest.raises(ValidationError, match=r"leases\.enabled needs runner"):
        IngestorSettings(leases={"enabled": True}, ingest={"partitions": [1]})
    for bad in ({"user": "encoder"}, {"password_file": pw},
                {"user": "encoder", "password_file": pw, "credentials_file": pw},
                {"user": "a b", "password_file": pw}, {"user": "x.y", "password_file": pw},
                {"replicas": 0}, {"replicas": 6}):
        with pytest.raises(ValidationError):
            JobQueueSettings(**bad)


def test_store_writes_bcrypt_hash_and_nats_accounts(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "broker")
    pw = store.add("cam01", "device")
    (acc,) = store.list()
    assert acc.nats_hash is not None and acc.nats_hash.startswith("$2b$")
    assert bcrypt.checkpw(pw.encode(), acc.nats_hash.encode())
    text = store.nats_accounts.read_text()
    assert acc.nats_hash in text and pw not in text
    assert store.nats_accounts.stat().st_mode & 0o777 == 0o640
    store.revoke("cam01")
    assert "cam01" not in store.nats_accounts.read_text()


def _render_cluster(tmp_path: Path, nodes: int) -> list[Path]:
    pki = PkiPaths(tmp_path / "pki")
    pki.root.mkdir()
    create_ca(pki)
    create_server_cert(pki, ["localhost", "127.0.0.1"])
    store = AccountStore(tmp_path / "broker")
    store.add("cam01", "device")
    store.add("ingestor", "service")
    plan = plan_nodes(tmp_path / "nats", nodes, mqtt_port_base=18883, port_base=24220)
    out = []
    for node in plan:
        node.dir.mkdir(parents=True)
        node.conf_file.write_text(render_node_config(
            node, plan, tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca_cert),
            accounts_file=store.nats_accounts, mqtt_bind="127.0.0.1",
            stream_replicas=min(3, nodes), max_ack_pending=1000, ack_wait_s=5.0))
        out.append(node.conf_file)
    return out


@pytest.mark.parametrize("nodes", [1, 3])
def test_rendered_configs_pass_nats_server_check(tmp_path: Path, nodes: int) -> None:
    confs = _render_cluster(tmp_path, nodes)
    for conf in confs:
        res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)],
                             capture_output=True, text=True, timeout=30, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "is valid" in res.stdout + res.stderr
    text = confs[0].read_text()
    assert ("cluster {" in text) == (nodes > 1)
    assert "127.0.0.1:18883" in text and "stream_replicas" in text
    assert 'ack_wait: "5000ms"' in text  # parsed by nats-server -t above


def test_broken_config_fails_the_check(tmp_path: Path) -> None:
    # The check above proves something: a bad permission map is refused.
    conf = tmp_path / "bad.conf"
    conf.write_text("accounts { A { users = [ {user: a, password: b, permissions: "
                    "{publish: {allw: [x]}}} ] } }\n")
    res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode != 0


def test_mqtt_311_client_for_the_nats_engine() -> None:
    s = MqttSettings(protocol="3.1.1", tls={"enabled": False}, port=1)
    c = make_client(s, client_id="x")
    assert c.protocol == mqtt.MQTTv311
    # The clean-session flag is fixed when the client is made; asking otherwise at
    # connect is an error, not a silent persistent (or lost) session.
    with pytest.raises(ValueError, match="clean_session=True"):
        connect_blocking(c, s, clean_start=True)
    assert make_client(MqttSettings(), client_id="y").protocol == mqtt.MQTTv5


def test_session_client_id_is_stable_and_secret() -> None:
    a = session_client_id("ingestor", "pw1")
    assert a == session_client_id("ingestor", "pw1") and a.startswith("ingestor-")
    assert a != session_client_id("ingestor", "pw2")
    assert session_client_id("ingestor", "") == "ingestor"
    c = make_client(MqttSettings(protocol="3.1.1", username="ingestor", password="pw1",
                                 client_id="ingestor", tls={"enabled": False}))
    assert c._client_id == a.encode()
