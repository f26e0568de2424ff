"""Routes between machines (``[broker.nats] hosts``): settings, the route secret and
certificate, the rendered ``cluster {}`` block, and ``nats-server -t`` on it.

The cluster really forming across network namespaces is
tests/integration/test_nats_routes.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from broker.cluster import ROUTE_SECRET, cluster_nodes, ensure_route_security
from broker.pki import certificate_names
from broker.run import prepare
from camstack.servers import nats_server_binary
from config.settings import BrokerSettings, NatsClusterSettings

NAMES = ["nats-0", "nats-1", "nats-2"]


def _check(conf: Path) -> None:
    res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0 and "is valid" in res.stdout + res.stderr, res.stderr


def test_hosts_settings_bounds() -> None:
    n = NatsClusterSettings()
    assert (n.route_hosts, n.routes_secured, n.route_listen_host) == (
        ["127.0.0.1"] * 3, False, "127.0.0.1")
    n = NatsClusterSettings(hosts=NAMES)
    assert (n.route_hosts, n.routes_secured, n.route_listen_host) == (NAMES, True, "0.0.0.0")
    assert NatsClusterSettings(hosts=NAMES, secure_routes=False,
                               route_bind="10.0.0.5").route_listen_host == "10.0.0.5"
    for bad in ({"hosts": ["nats-0"]},                       # not one per node
                {"hosts": ["a", "a", "b"]},                   # twice the same
                {"hosts": ["u:p@a", "b", "c"]},               # would inject a user into the URL
                {"hosts": ['a"', "b", "c"]},                  # would break the quoting
                {"hosts": ["a", "b", "c"], "unknown": 1}):
        with pytest.raises(ValidationError):
            NatsClusterSettings.model_validate(bad)


def test_loopback_default_renders_no_route_security(tmp_path: Path) -> None:
    settings = BrokerSettings(engine="nats", data_dir=tmp_path / "data")
    layout = prepare(settings)
    for node in cluster_nodes(settings, layout):
        text = node.conf_file.read_text(encoding="utf-8")
        assert f'listen: "127.0.0.1:{node.cluster_port}"' in text
        assert "nats-route://127.0.0.1:" in text
        assert "authorization" not in text and "advertise" not in text
        assert text.count("tls {") == 1  # the MQTT listener's only
        _check(node.conf_file)
    assert not layout.service_password_file(ROUTE_SECRET).exists()
    assert not layout.pki.route_cert.exists()


def test_hosts_render_named_routes_with_tls_and_password(tmp_path: Path) -> None:
    settings = BrokerSettings(engine="nats", data_dir=tmp_path / "data",
                              nats=NatsClusterSettings(hosts=NAMES, client_bind="0.0.0.0"))
    layout = prepare(settings)
    sec = ensure_route_security(settings, layout)
    assert sec is not None
    assert sec == ensure_route_security(settings, layout), "the password is made once"
    pw_file = layout.service_password_file(ROUTE_SECRET)
    assert pw_file.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(layout.pki.route_cert.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert sorted(certificate_names(layout.pki.route_cert)) == NAMES
    nodes = cluster_nodes(settings, layout)
    for node in nodes:
        text = node.conf_file.read_text(encoding="utf-8")
        assert node.conf_file.stat().st_mode & 0o777 == 0o600  # holds the password
        assert f'advertise: "{NAMES[node.index]}:{node.cluster_port}"' in text
        assert f'listen: "0.0.0.0:{node.cluster_port}"' in text
        assert f'listen: "0.0.0.0:{node.client_port}"' in text
        for other in nodes:
            assert (f"nats-route://route:{sec.password}@{other.host}:{other.cluster_port}"
                    in text)
        assert "verify: true" in text and str(layout.pki.route_cert) in text
        _check(node.conf_file)


def test_new_hosts_reissue_the_route_certificate(tmp_path: Path) -> None:
    settings = BrokerSettings(engine="nats", data_dir=tmp_path / "data",
                              nats=NatsClusterSettings(hosts=NAMES))
    layout = prepare(settings)
    moved = settings.model_copy(update={"nats": NatsClusterSettings(
        hosts=["10.0.0.1", "10.0.0.2", "nats-c.example"])})
    prepare(moved)
    assert sorted(certificate_names(layout.pki.route_cert)) == sorted(
        ["10.0.0.1", "10.0.0.2", "nats-c.example"])
