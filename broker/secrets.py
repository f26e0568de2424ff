"""The firmware secrets header written at provisioning (``firmware/secrets/<id>.h``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from broker.errors import ProvisionError


def _c_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(name: str) -> bool:
    """Whether ``name`` only ever means this machine (a camera cannot reach it).

    Args:
        name: A DNS name or IP address.

    Returns:
        True for ``localhost`` (and ``*.localhost``) and loopback addresses.
    """
    low = name.lower().rstrip(".")
    if low in LOOPBACK_NAMES or low.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(low).is_loopback
    except ValueError:
        return False


def tls_name_for(host: str, server_names: list[str]) -> str:
    """The DNS name the device verifies when it reaches the broker by IP address.

    mbedTLS 2.28 (ESP-IDF 4.4) matches DNS names only, so an IP host needs a DNS name
    from the server certificate (``CAMLINK_BROKER_TLS_NAME``).

    Args:
        host: Broker host as the device reaches it.
        server_names: The server certificate's names (read from the certificate).

    Returns:
        When ``host`` is an IP address, the certificate's first DNS name that is not a
        loopback name (else its first DNS name, else ""); "" for a DNS host.
    """
    if not is_ip(host):
        return ""
    dns = [n for n in server_names if not is_ip(n)]
    return next((n for n in dns if not is_loopback(n)), dns[0] if dns else "")


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (not a DNS name).

    Args:
        name: Host text.

    Returns:
        True for an address.
    """
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
    wired: bool = False,
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
        wired: The board reaches the network without Wi-Fi (``CAMLINK_WIRED_NETWORK``).

    Returns:
        The header text.
    """
    if ")PEM" in ca_pem:
        raise ValueError("CA PEM cannot contain the raw-string delimiter")
    return (
        "// Written by `camstack device add`. Secret: never commit this file.\n"
        "#pragma once\n"
        f"#define CAM_DEVICE_ID {_c_string(device_id)}\n"
        f"#define CAM_MQTT_PASSWORD {_c_string(password)}\n"
        f"#define CAM_MQTT_HOST {_c_string(host)}\n"
        + (f"#define CAMLINK_BROKER_TLS_NAME {_c_string(tls_name)}\n" if tls_name else "")
        + f"#define CAM_MQTT_PORT {int(port)}\n"
        f"#define CAM_TOPIC_PREFIX {_c_string(prefix)}\n"
        f"#define CAM_WIFI_SSID {_c_string(wifi_ssid)}\n"
        f"#define CAM_WIFI_PASSWORD {_c_string(wifi_password)}\n"
        + ("#define CAMLINK_WIRED_NETWORK 1\n" if wired else "")
        + f'static const char CAM_CA_PEM[] = R"PEM({ca_pem.strip()}\n)PEM";\n'
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


def _fix_hint(names: list[str], extra: str) -> str:
    keep = [n for n in names if n.lower() != extra.lower()]
    return f"camstack server-cert {' '.join([*keep, extra])}"


def choose_broker_host(requested: str | None, cert_names: list[str]) -> tuple[str, str]:
    """The host a camera is told, checked against the server certificate's names.

    The camera verifies the broker's certificate: a host the certificate does not name
    fails its TLS handshake forever; ``localhost`` means the camera itself; and an IP
    address works only through a DNS name of the certificate, which the firmware
    verifies instead (ESP-IDF 4.4's mbedTLS matches DNS names only).

    Args:
        requested: ``--broker-host``, or None to pick one from the certificate.
        cert_names: The names in the broker's certificate, in order.

    Returns:
        ``(host, tls_name)``: ``tls_name`` is the DNS name the camera verifies when
        ``host`` is an IP address, else "".

    Raises:
        ProvisionError: With what to run to fix it.
    """
    shown = ", ".join(cert_names) or "none"
    dns = [n for n in cert_names if not is_ip(n)]
    if requested is None:
        usable = [n for n in dns if not is_loopback(n)]
        if not usable:
            raise ProvisionError(
                f"the server certificate names only {shown}: a camera cannot reach the "
                "broker by any of these. Re-issue it with the name cameras use, e.g. "
                f"`{_fix_hint(cert_names, 'camhub.lan')}`, restart the broker, then "
                "pass --broker-host camhub.lan")
        return usable[0], ""
    host = requested.strip()
    if is_loopback(host):
        raise ProvisionError(
            f"--broker-host {host} would make the camera connect to itself; give the "
            "name or address of this machine on the camera's network")
    if is_ip(host):
        tls_name = tls_name_for(host, cert_names)
        if not tls_name:
            raise ProvisionError(
                f"--broker-host {host} is an IP address and the server certificate has no "
                f"DNS name ({shown}); the camera's TLS stack verifies DNS names only. "
                f"Re-issue it with one: `{_fix_hint(cert_names, 'camhub.lan')}`, and "
                "restart the broker")
        return host, tls_name
    if host.lower().rstrip(".") not in {n.lower().rstrip(".") for n in dns}:
        raise ProvisionError(
            f"--broker-host {host} is not in the server certificate ({shown}); the "
            f"camera would fail TLS. Re-issue it: `{_fix_hint(cert_names, host)}`, "
            "restart the broker, and run this again")
    return host, ""
