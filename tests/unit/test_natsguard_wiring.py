"""The NATS guard's wiring: its system-account user, password, settings, entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from pydantic import ValidationError

from broker.accounts import NATS_GUARD_USER, AccountStore
from broker.cluster import ensure_guard_user, write_cluster
from broker.errors import AccountError
from broker.layout import Layout
from broker.natscluster import render_accounts
from broker.pki import PkiPaths, create_ca, create_server_cert
from camstack.servers import nats_server_binary
from config.settings import BrokerSettings, NatsClusterSettings, NatsGuardSettings
from natsguard.__main__ import budget_of, node_urls
from natsguard.service import parse_conn, parse_time

REPO = Path(__file__).resolve().parents[2]


def test_accounts_file_has_the_system_account_and_its_users() -> None:
    text, missing = render_accounts([], "cam", system_users={"guard": "$2b$10$abc"})
    assert missing == []
    assert "system_account: SYS" in text
    sys_block = text.split("  SYS {")[1]
    assert '{user: "guard", password: "$2b$10$abc"' in sys_block
    assert 'allowed_connection_types: ["STANDARD"]' in sys_block
    # Without the guard the system account is there, empty (the file stays valid).
    assert '  SYS {\n    users = [\n    ]\n  }' in render_accounts([], "cam")[0]


def test_guard_user_and_password_made_once(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "data")
    store = AccountStore(layout.broker_dir)
    store.add("cam01", "device")
    assert ensure_guard_user(store, layout)
    pw_file = layout.service_password_file(NATS_GUARD_USER)
    assert pw_file.stat().st_mode & 0o777 == 0o600
    password = pw_file.read_text().strip()
    hashed = store.system_users()[NATS_GUARD_USER]
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    text = store.nats_accounts.read_text()
    assert hashed in text and password not in text and '"cam01"' in text
    assert store.nats_system_users.stat().st_mode & 0o777 == 0o600
    assert not ensure_guard_user(store, layout)  # kept
    assert pw_file.read_text().strip() == password
    # Later account changes keep the system user in the file.
    store.add("cam02", "device")
    assert hashed in store.nats_accounts.read_text()


def test_no_device_may_be_named_like_the_guard(tmp_path: Path) -> None:
    # NATS user names are unique across accounts: a device "guard" would break the file.
    with pytest.raises(AccountError, match="reserved"):
        AccountStore(tmp_path / "broker").add(NATS_GUARD_USER, "device")


def test_rendered_cluster_with_the_guard_passes_nats_server_check(tmp_path: Path) -> None:
    s = BrokerSettings(data_dir=tmp_path / "data", engine="nats",
                       nats=NatsClusterSettings(nodes=3, mqtt_port_base=18883))
    layout = Layout(s.data_dir)
    pki = PkiPaths(layout.data_dir / "pki")
    pki.root.mkdir(parents=True)
    create_ca(pki)
    create_server_cert(pki, ["localhost"])
    nodes = write_cluster(s, layout)
    assert layout.service_password_file(NATS_GUARD_USER).exists()
    res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(nodes[0].conf_file)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_guard_settings_bounds_and_defaults() -> None:
    s = BrokerSettings(engine="nats", device_msgs_per_s=10, device_burst_msgs=20)
    assert node_urls(s) == [f"nats://127.0.0.1:{14220 + 10 * i}" for i in range(3)]
    b = budget_of(s)
    assert (b.msgs_per_s, b.burst_msgs, b.max_debt_s) == (10, 20, 60)
    assert (s.nats.guard.ban_max_devices, s.nats.guard.ban_max_s) == (1000, 3600)
    custom = BrokerSettings(engine="nats", nats={"guard": {"servers": ["nats://h:1"]}})
    assert node_urls(custom) == ["nats://h:1"]
    for bad in ({"interval_s": 0}, {"page_size": 1}, {"reply_timeout_s": 0},
                {"max_accounts": 0}, {"ban_max_devices": -1}, {"ban_max_s": 0},
                {"unknown": 1}):
        with pytest.raises(ValidationError):
            NatsGuardSettings(**bad)


def test_entry_point_answers_help_and_refuses_mosquitto(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "natsguard", "--help"], capture_output=True,
                         text=True, timeout=60, check=False, env=env)
    assert res.returncode == 0 and "--config" in res.stdout
    res = subprocess.run([sys.executable, "-m", "natsguard", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False, env=env)
    assert res.returncode == 2 and "engine" in res.stderr


def test_connz_entries_as_nats_server_2_15_1_sends_them() -> None:
    # An MQTT connection as a real node listed it (docs/scaling.md, fact 23).
    raw = {"cid": 26, "kind": "Client", "type": "mqtt", "ip": "127.0.0.1", "port": 55345,
           "start": "2026-11-30T18:10:25.508538175Z", "in_msgs": 10, "out_msgs": 0,
           "in_bytes": 1230, "out_bytes": 0, "subscriptions": 0, "authorized_user": "dev1",
           "account": "CAMSTACK", "name_tag": "CAMSTACK", "mqtt_client": "dev1"}
    conn = parse_conn("NAGQ", raw)
    assert conn is not None
    assert (conn.server, conn.cid, conn.user, conn.client_id, conn.in_msgs,
            conn.in_bytes) == ("NAGQ", 26, "dev1", "dev1", 10, 1230)
    assert conn.started == pytest.approx(parse_time("2026-11-30T18:10:25.508538Z"))
    # A NATS-protocol connection has no mqtt_client; unreadable entries are refused.
    plain = parse_conn("S", {"cid": 1, "authorized_user": "x", "in_msgs": 0, "in_bytes": 0})
    assert plain is not None and plain.client_id is None and plain.started is None
    bads: list[object] = [None, [], {"cid": "1"}, {"cid": 1, "in_msgs": "9"},
                          {"cid": 1, "mqtt_client": 5}, {"cid": 1, "authorized_user": 3}]
    for bad in bads:
        assert parse_conn("S", bad) is None
    assert parse_time("yesterday") is None and parse_time(None) is None
