"""The firmware secrets header written at provisioning (``firmware/secrets/<id>.h``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _c_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def tls_name_for(host: str, server_names: list[str]) -> str:
    """The DNS name the device verifies when it reaches the broker by IP address.

    mbedTLS 2.28 (ESP-IDF 4.4) matches DNS names only, so an IP host needs a DNS name
    from the server certificate (``CAMLINK_BROKER_TLS_NAME``).

    Args:
        host: Broker host as the device reaches it.
        server_names: The server certificate's names.

    Returns:
        The first DNS name of the certificate when ``host`` is an IP address, else "".
    """
    if not _is_ip(host):
        return ""
    return next((n for n in server_names if not _is_ip(n)), "")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


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
    tls_name: str = "",
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
        tls_name: DNS name from the server certificate the device verifies when ``host``
            is an IP address (``CAMLINK_BROKER_TLS_NAME``), optional.

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
        + (f"#define CAMLINK_BROKER_TLS_NAME {_c_string(tls_name)}\n" if tls_name else "")
        + f"#define CAM_MQTT_PORT {int(port)}\n"
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
