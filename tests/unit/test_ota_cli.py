"""``device ota``: image checks, the ``ota`` command, the HTTPS image server, and the
secrets header's TLS name for a broker reached by IP address (review defect 1)."""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from broker.pki import PkiPaths, create_ca, create_server_cert
from broker.secrets import render_secrets_header, tls_name_for
from camstack.ota import ImageServer, load_image, ota_command

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def _image(tmp_path: Path, size: int = 50_000) -> Path:
    data = bytes([0xE9]) + bytes((i * 31 + 7) % 256 for i in range(size - 1))
    path = tmp_path / "firmware.bin"
    path.write_bytes(data)
    return path


def test_load_image_and_command(tmp_path: Path) -> None:
    img = load_image(_image(tmp_path))
    assert img.size == 50_000
    assert img.sha256 == hashlib.sha256((tmp_path / "firmware.bin").read_bytes()).hexdigest()
    cmd = json.loads(ota_command("https://broker.lan:8443/fw/x.bin", img))
    assert cmd == {"cmd": "ota", "url": "https://broker.lan:8443/fw/x.bin",
                   "sha256": img.sha256, "size": 50_000}
    with pytest.raises(ValueError, match="https"):
        ota_command("http://broker.lan/fw.bin", img)
    with pytest.raises(ValueError, match="128"):
        ota_command("https://" + "a" * 121, img)
    (tmp_path / "bad.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="0xE9"):
        load_image(tmp_path / "bad.bin")


def test_image_server_serves_the_image_over_https(tmp_path: Path) -> None:
    pki = PkiPaths(tmp_path / "pki")
    create_ca(pki)
    create_server_cert(pki, ["localhost", "127.0.0.1"])
    img = load_image(_image(tmp_path))
    server = ImageServer(img, pki.server_cert, pki.server_key, bind="127.0.0.1", port=0).start()
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        url = server.url("localhost")
        assert url == f"https://localhost:{server.port}/fw/{img.sha256}.bin"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"https://localhost:{server.port}/fw/other.bin",
                                   context=ctx, timeout=10)
        assert e.value.code == 404
        assert not server.done.is_set()
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            assert resp.headers["Content-Length"] == str(img.size)
            body = resp.read()
        assert hashlib.sha256(body).hexdigest() == img.sha256
        assert server.done.wait(5) and server.downloads == 1
    finally:
        server.stop()


def test_tls_name_only_for_ip_hosts() -> None:
    names = ["192.168.1.10", "broker.lan", "other.lan"]
    assert tls_name_for("192.168.1.10", names) == "broker.lan"
    assert tls_name_for("fd00::1", names) == "broker.lan"
    assert tls_name_for("broker.lan", names) == ""
    assert tls_name_for("192.168.1.10", ["192.168.1.10"]) == ""  # no DNS name to offer


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_secrets_header_with_tls_name_passes_the_firmware_checks(tmp_path: Path) -> None:
    """The header `device add` writes for an IP host compiles against the firmware's
    secrets_select.h and carries the TLS name; an empty SSID is refused at compile time."""
    def compile_with(ssid: str) -> subprocess.CompletedProcess[str]:
        header = render_secrets_header(
            device_id="cam01", password="pw", host="192.168.1.10", port=8883, prefix="cam",
            ca_pem="-----BEGIN CERTIFICATE-----\nAA\n", wifi_ssid=ssid,
            tls_name=tls_name_for("192.168.1.10", ["192.168.1.10", "broker.lan"]))
        (tmp_path / "s.h").write_text(header)
        src = tmp_path / "m.cpp"
        src.write_text('#include "secrets_select.h"\n#include <cstring>\n'
                       'int main(){return std::strcmp(CAMLINK_BROKER_TLS_NAME, "broker.lan");}\n')
        return subprocess.run(
            ["g++", "-std=gnu++17", "-Wall", "-Werror", f"-I{FIRMWARE / 'src'}",
             f"-I{FIRMWARE / 'lib/camlink/src'}", f'-DCAM_SECRETS_FILE="{tmp_path / "s.h"}"',
             "-o", str(tmp_path / "m"), str(src)],
            capture_output=True, text=True, check=False)

    res = compile_with("MyNet")
    assert res.returncode == 0, res.stderr
    assert subprocess.run([str(tmp_path / "m")], check=False).returncode == 0
    res = compile_with("")
    assert res.returncode != 0
    assert "CAM_WIFI_SSID is empty" in res.stderr
