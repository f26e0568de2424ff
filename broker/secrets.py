"""The firmware secrets header written at provisioning (``firmware/secrets/<id>.h``)."""

from __future__ import annotations

import os
from pathlib import Path


def _c_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_secrets_header(
    *,
    device_id: str,
    password: str,
    host: str,
    port: int,
    prefix: str,
    ca_pem: str,
    wifi_ssid: str = "",
    wifi_password: str = "",
) -> str:
    """C header the firmware build includes (see docs/firmware.md).

    Args:
        device_id: Device id (MQTT username and client id).
        password: Device password.
        host: Broker host name as the device reaches it (must be in the server cert).
        port: TLS port.
        prefix: Topic prefix.
        ca_pem: CA certificate, embedded so the device verifies the broker.
        wifi_ssid: Wi-Fi network, optional.
        wifi_password: Wi-Fi password, optional.

    Returns:
        The header text.
    """
    if ")PEM" in ca_pem:
        raise ValueError("CA PEM cannot contain the raw-string delimiter")
    return (
        "// Written by `python -m broker device add`. Secret: never commit this file.\n"
        "#pragma once\n"
        f"#define CAM_DEVICE_ID {_c_string(device_id)}\n"
        f"#define CAM_MQTT_PASSWORD {_c_string(password)}\n"
        f"#define CAM_MQTT_HOST {_c_string(host)}\n"
        f"#define CAM_MQTT_PORT {int(port)}\n"
        f"#define CAM_TOPIC_PREFIX {_c_string(prefix)}\n"
        f"#define CAM_WIFI_SSID {_c_string(wifi_ssid)}\n"
        f"#define CAM_WIFI_PASSWORD {_c_string(wifi_password)}\n"
        f'static const char CAM_CA_PEM[] = R"PEM({ca_pem.strip()}\n)PEM";\n'
    )


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only.

    Args:
        path: Destination (parents are created).
        text: Content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
