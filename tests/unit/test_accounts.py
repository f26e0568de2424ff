"""Accounts, password hashing, ACL rendering, PKI and the firmware secrets header."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.accounts import AccountStore, hash_password, render_acl, service_role
from broker.errors import AccountError
from broker.pki import PkiPaths, create_ca, create_server_cert, ensure_pki
from broker.secrets import render_secrets_header


def test_hash_matches_mosquitto_format() -> None:
    h = hash_password("secret", salt=b"0123456789ab")
    kind, iterations, salt, digest = h.split("$")[1:]
    assert (kind, iterations) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


def test_add_list_revoke(tmp_path: Path) -> None:
    store = AccountStore(tmp_path)
    pw = store.add("cam01", "device")
    assert len(pw) >= 32
    assert [a.name for a in store.list()] == ["cam01"]
    assert "cam01:$7$101$" in (tmp_path / "passwd").read_text()
    with pytest.raises(AccountError, match="already exists"):
        store.add("cam01", "device")
    store.revoke("cam01")
    assert store.list() == []
    assert "cam01" not in (tmp_path / "passwd").read_text()
    assert store.list(include_revoked=True)[0].revoked is not None
    with pytest.raises(AccountError, match="no active account"):
        store.revoke("cam01")
    store.add("cam01", "device")  # re-provisioning after revocation is allowed
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) & 0o007 == 0


# "cam03\n": a pattern ending in $ matched it and wrote a broken passwd line.
@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 33, "ca m", "cam03\n", "\ncam03"])
def test_bad_device_ids_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(AccountError, match="invalid id"):
        AccountStore(tmp_path).add(bad, "device")


@pytest.mark.parametrize("reserved", ["ingestor", "encoder", "operator", "encoder-2"])
def test_service_names_reserved(tmp_path: Path, reserved: str) -> None:
    with pytest.raises(AccountError, match="reserved"):
        AccountStore(tmp_path).add(reserved, "device")


def test_service_roles_and_acl() -> None:
    assert service_role("encoder-2") == "encoder"
    assert service_role("encoders") is None
    store_accounts = []
    from broker.accounts import Account  # noqa: PLC0415

    for name in ("ingestor", "encoder", "encoder-2", "operator"):
        store_accounts.append(Account(name, "service", "h", "now"))
    acl = render_acl(store_accounts, "cam")
    assert "pattern write cam/%u/frame" in acl
    assert "pattern read cam/%u/cmd" in acl
    assert "user encoder-2\ntopic read cam/+/ready" in acl
    assert "topic readwrite svc/encoder-2/#" in acl
    # devices get nothing but the pattern lines
    assert "pattern read cam/%u/frame" not in acl


def test_pki_chain_verifies(tmp_path: Path) -> None:
    paths = PkiPaths(tmp_path)
    assert ensure_pki(paths, ["broker.local", "10.0.0.5"])
    assert not ensure_pki(paths, ["ignored"])
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600  # the broker never reads it
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o640
    paths.ca_key.chmod(0o640)  # a folder from before: tightened by the next ensure_pki
    assert not ensure_pki(paths, ["ignored"])
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    assert ctx.cert_store_stats()["x509_ca"] == 1
    text = subprocess.run(["openssl", "x509", "-in", str(paths.server_cert), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:broker.local" in text and "IP Address:10.0.0.5" in text
    res = subprocess.run(["openssl", "verify", "-CAfile", str(paths.ca_cert),
                          str(paths.server_cert)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_server_cert_needs_ca(tmp_path: Path) -> None:
    from broker.errors import PkiError  # noqa: PLC0415

    with pytest.raises(PkiError, match="CA missing"):
        create_server_cert(PkiPaths(tmp_path), ["x"])
    create_ca(PkiPaths(tmp_path))
    with pytest.raises(PkiError, match="at least one"):
        create_server_cert(PkiPaths(tmp_path), [])


def test_secrets_header_compiles(tmp_path: Path) -> None:
    header = render_secrets_header(device_id="cam01", password='p"w\\x', host="h", port=8883,
                                   prefix="cam", ca_pem="-----BEGIN CERTIFICATE-----\nAA\n")
    (tmp_path / "s.h").write_text(header)
    src = tmp_path / "m.cpp"
    src.write_text('#include "s.h"\n#include <cstring>\nint main(){return std::strcmp('
                   'CAM_MQTT_PASSWORD, "p\\"w\\\\x") != 0 || CAM_MQTT_PORT != 8883;}\n')
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-o", str(tmp_path / "m"),
                    str(src)], check=True)
    assert subprocess.run([str(tmp_path / "m")], check=False).returncode == 0


def test_cli_device_add_json(tmp_path: Path) -> None:
    data = tmp_path / "d"
    for args in (["init"], ["server-cert", "localhost", "camhub.test"]):
        subprocess.run([sys.executable, "-m", "broker", "--data-dir", str(data), *args],
                       capture_output=True, check=True)
    res = subprocess.run(
        [sys.executable, "-m", "broker", "--data-dir", str(data), "device", "add",
         "cam07", "--json", "--secrets-dir", str(tmp_path / "fw"), "--wifi-ssid", "farm"],
        capture_output=True, text=True, check=True,
    )
    info = json.loads(res.stdout)
    assert info["username"] == "cam07" and len(info["password"]) >= 32
    assert info["host"] == "camhub.test"  # the certificate's first name that is not localhost
    header = (tmp_path / "fw" / "cam07.h").read_text()
    assert info["password"] in header and "BEGIN CERTIFICATE" in header
    assert stat.S_IMODE((tmp_path / "fw" / "cam07.h").stat().st_mode) == 0o600
    res = subprocess.run([sys.executable, "-m", "broker", "--data-dir", str(data),
                          "device", "add", "cam07", "--wifi-ssid", "farm",
                          "--secrets-dir", str(tmp_path / "fw2")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "already exists" in res.stderr


# --- provisioning checks (issue 14): run in-process, one data folder per test ----------

def _broker(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from broker.__main__ import main  # noqa: PLC0415

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def certdata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A data folder whose server certificate names localhost, camhub.lan, 192.168.1.20."""
    data = tmp_path / "d"
    code, _, err = _broker(["--data-dir", str(data), "init"], capsys)
    assert code == 0, err
    code, _, err = _broker(["--data-dir", str(data), "server-cert", "localhost", "127.0.0.1",
                            "camhub.lan", "192.168.1.20"], capsys)
    assert code == 0, err
    return data


def _add(data: Path, device: str, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[int, str, str]:
    return _broker(["--data-dir", str(data), "device", "add", device, "--json", "--no-reload",
                    "--secrets-dir", str(data.parent / "fw"), *extra], capsys)


def test_broker_host_must_be_in_the_certificate(certdata: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _add(certdata, "cam01", capsys, "--broker-host", "broker.lan",
                        "--wifi-ssid", "farm")
    assert code == 1
    assert "broker.lan is not in the server certificate (localhost, 127.0.0.1, camhub.lan, " \
           "192.168.1.20)" in err
    assert "camstack server-cert localhost 127.0.0.1 camhub.lan 192.168.1.20 broker.lan" in err
    assert not (certdata.parent / "fw" / "cam01.h").exists()
    assert AccountStore(certdata / "broker").list() == [a for a in AccountStore(
        certdata / "broker").list() if a.kind == "service"], "no account made on refusal"
    code, out, err = _add(certdata, "cam01", capsys, "--broker-host", "CAMHUB.lan",
                          "--wifi-ssid", "farm")
    assert code == 0, err
    assert json.loads(out)["host"] == "CAMHUB.lan"  # DNS names match case-insensitively


def test_default_host_is_never_localhost(tmp_path: Path, certdata: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _add(certdata, "cam01", capsys, "--wifi-ssid", "farm")
    assert code == 0, err
    assert json.loads(out)["host"] == "camhub.lan"
    assert '#define CAM_MQTT_HOST "camhub.lan"' in (tmp_path / "fw" / "cam01.h").read_text()
    fresh = tmp_path / "fresh"  # `init` only: localhost, 127.0.0.1
    code, _, err = _add(fresh, "cam02", capsys, "--wifi-ssid", "farm")
    assert code == 1
    assert "names only localhost, 127.0.0.1" in err and "camstack server-cert" in err
    code, _, err = _add(fresh, "cam02", capsys, "--wifi-ssid", "farm", "--broker-host",
                        "127.0.0.1")
    assert code == 1 and "connect to itself" in err


def test_ip_host_needs_a_dns_name_in_the_certificate(tmp_path: Path, certdata: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _add(certdata, "cam01", capsys, "--broker-host", "192.168.1.20",
                          "--wifi-ssid", "farm")
    assert code == 0, err
    assert json.loads(out)["tls_name"] == "camhub.lan"  # not localhost, though it comes first
    header = (tmp_path / "fw" / "cam01.h").read_text()
    assert '#define CAMLINK_BROKER_TLS_NAME "camhub.lan"' in header
    ips = tmp_path / "ips"
    _broker(["--data-dir", str(ips), "init"], capsys)
    _broker(["--data-dir", str(ips), "server-cert", "192.168.1.20"], capsys)
    code, _, err = _add(ips, "cam02", capsys, "--broker-host", "192.168.1.20",
                        "--wifi-ssid", "farm")
    assert code == 1
    assert "no DNS name (192.168.1.20)" in err and "camstack server-cert 192.168.1.20 " in err


def test_empty_ssid_refused_unless_wired(tmp_path: Path, certdata: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _add(certdata, "cam01", capsys)
    assert code == 1 and "--wifi-ssid is empty" in err and "--wired" in err
    assert not (tmp_path / "fw" / "cam01.h").exists()
    code, _, err = _add(certdata, "cam01", capsys, "--wired")
    assert code == 0, err
    header = tmp_path / "fw" / "cam01.h"
    assert "#define CAMLINK_WIRED_NETWORK 1" in header.read_text()
    # The firmware's own compile-time check accepts it (and refuses it without --wired).
    firmware = Path(__file__).resolve().parents[2] / "firmware"
    src = tmp_path / "m.cpp"
    src.write_text('#include "secrets_select.h"\nint main(){return 0;}\n')
    res = subprocess.run(
        ["g++", "-std=gnu++17", "-fsyntax-only", f"-I{firmware / 'src'}",
         f"-I{firmware / 'lib/camlink/src'}", f'-DCAM_SECRETS_FILE="{header}"', str(src)],
        capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    header.write_text(header.read_text().replace("#define CAMLINK_WIRED_NETWORK 1\n", ""))
    res = subprocess.run(
        ["g++", "-std=gnu++17", "-fsyntax-only", f"-I{firmware / 'src'}",
         f"-I{firmware / 'lib/camlink/src'}", f'-DCAM_SECRETS_FILE="{header}"', str(src)],
        capture_output=True, text=True, check=False)
    assert "CAM_WIFI_SSID is empty" in res.stderr


def test_revoked_device_is_not_silently_rewritten(tmp_path: Path, certdata: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _add(certdata, "cam01", capsys, "--wifi-ssid", "farm",
                          "--wifi-password", "secret1")
    assert code == 0, err
    first = json.loads(out)["password"]
    header = tmp_path / "fw" / "cam01.h"
    before = header.read_text()
    assert _broker(["--data-dir", str(certdata), "device", "revoke", "cam01", "--no-reload"],
                   capsys)[0] == 0
    code, _, err = _add(certdata, "cam01", capsys)  # defaults: would lose the Wi-Fi
    assert code == 1, "an empty SSID is refused before anything else"
    code, _, err = _add(certdata, "cam01", capsys, "--wifi-ssid", "other")
    assert code == 1
    assert "cam01 was revoked on" in err and "--force" in err and "new password" in err
    assert header.read_text() == before
    assert "cam01" not in (certdata / "broker" / "passwd").read_text()
    code, out, err = _add(certdata, "cam01", capsys, "--wifi-ssid", "other", "--force")
    assert code == 0, err
    second = json.loads(out)["password"]
    assert second != first and second in header.read_text()
    assert '"other"' in header.read_text()
    # A header left by another data folder is not overwritten without --force either.
    elsewhere = tmp_path / "elsewhere"
    _broker(["--data-dir", str(elsewhere), "init"], capsys)
    _broker(["--data-dir", str(elsewhere), "server-cert", "camhub.lan"], capsys)
    code, _, err = _add(elsewhere, "cam01", capsys, "--wifi-ssid", "farm")
    assert code == 1 and "exists already" in err


def test_simulator_never_brings_back_a_revoked_device(tmp_path: Path) -> None:
    from broker.errors import BrokerToolError  # noqa: PLC0415
    from camstack.stack import ensure_device_account  # noqa: PLC0415

    store = AccountStore(tmp_path / "b")
    pw = ensure_device_account(store, "sim-cam01", tmp_path / "pw")
    assert ensure_device_account(store, "sim-cam01", tmp_path / "pw") == pw  # reused
    store.revoke("sim-cam01")
    with pytest.raises(BrokerToolError, match="revoked"):
        ensure_device_account(store, "sim-cam01", tmp_path / "pw")
    assert "sim-cam01" not in {a.name for a in store.list()}
