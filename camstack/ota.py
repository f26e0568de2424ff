"""``device ota <id> <firmware.bin>``: hand a device a new firmware image.

The image's SHA-256 and size go into an ``ota`` command on ``<prefix>/<id>/cmd``
(docs/protocol.md); the device downloads the image over HTTPS, checks size and digest,
switches its boot slot, and keeps the new image only if it reaches the broker again
(docs/firmware.md, OTA). The image is either served here over HTTPS with the broker's
server certificate (which the device already trusts through the pinned camstack CA) or
already hosted elsewhere (``--url``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import BrokerToolError
from broker.layout import Layout
from config.settings import BrokerSettings, MqttSettings, TlsSettings
from mqttclient import connect_blocking, make_client

MAX_URL = 128
"""The device's command reader takes strings of at most 128 bytes."""


@dataclass(frozen=True)
class Image:
    """A firmware image: its bytes, SHA-256 (hex) and size."""

    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        """Bytes."""
        return len(self.data)


def load_image(path: Path) -> Image:
    """Read a firmware image.

    Args:
        path: The ``firmware.bin`` PlatformIO built.

    Returns:
        The image.

    Raises:
        ValueError: Empty or not an ESP32 app image (first byte 0xE9).
    """
    data = path.read_bytes()
    if not data or data[0] != 0xE9:
        raise ValueError(f"{path} is not an ESP32 app image (no 0xE9 magic byte)")
    return Image(data, hashlib.sha256(data).hexdigest())


def ota_command(url: str, image: Image) -> bytes:
    """The ``ota`` command payload.

    Args:
        url: ``https://`` URL the device downloads the image from.
        image: The image.

    Returns:
        Compact JSON.

    Raises:
        ValueError: The URL is not https or too long for the device.
    """
    if not url.startswith("https://") or len(url) > MAX_URL:
        raise ValueError(f"url must be https:// and at most {MAX_URL} bytes: {url!r}")
    cmd = {"cmd": "ota", "url": url, "sha256": image.sha256, "size": image.size}
    return json.dumps(cmd, separators=(",", ":")).encode()


class ImageServer:
    """Serves one image over HTTPS at ``/fw/<sha256>.bin`` until stopped.

    Args:
        image: The image.
        cert_file: Server certificate (PEM; the broker's, signed by the camstack CA).
        key_file: Its key.
        bind: Address to listen on.
        port: Port (0 picks a free one).
    """

    def __init__(self, image: Image, cert_file: Path, key_file: Path, *,
                 bind: str = "0.0.0.0", port: int = 8443) -> None:
        self.image = image
        self.path = f"/fw/{image.sha256}.bin"
        self.downloads = 0
        self.done = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != server.path:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(server.image.size))
                self.end_headers()
                try:
                    self.wfile.write(server.image.data)
                except OSError:
                    return
                server.downloads += 1
                server.done.set()

            def log_message(self, fmt: str, *args: Any) -> None:
                return

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._httpd = http.server.ThreadingHTTPServer((bind, port), Handler)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ota-http",
                                        daemon=True)

    def url(self, host: str) -> str:
        """The image's URL as the device reaches ``host``."""
        h = f"[{host}]" if ":" in host else host
        return f"https://{h}:{self.port}{self.path}"

    def start(self) -> ImageServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def send_command(mqtt_settings: MqttSettings, device: str, payload: bytes,
                 timeout: float = 10.0) -> None:
    """Publish ``payload`` to the device's command topic (QoS 1) and wait for the PUBACK.

    Args:
        mqtt_settings: The sending (operator) account's connection.
        device: Device id.
        payload: The command.
        timeout: Seconds for connect and PUBACK each.

    Raises:
        BrokerToolError: Not connected or not acknowledged in time.
    """
    client = make_client(mqtt_settings)
    connect_blocking(client, mqtt_settings, clean_start=True, timeout=timeout)
    try:
        info = client.publish(f"{mqtt_settings.topic_prefix}/{device}/cmd", payload, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise BrokerToolError("the broker did not acknowledge the command")
    finally:
        client.disconnect()
        client.loop_stop()


def run_ota(args: argparse.Namespace, settings: BrokerSettings, layout: Layout) -> int:
    """The ``device ota`` command (see the module docstring).

    Returns:
        0 when the command was sent (and, when serving, the image was downloaded).
    """
    try:
        image = load_image(args.image)
    except (OSError, ValueError) as exc:
        raise BrokerToolError(str(exc)) from exc
    mqtt_settings = MqttSettings(
        host=args.mqtt_host, port=settings.tls_port, username=args.account,
        client_id=args.account, password_file=layout.service_password_file(args.account),
        topic_prefix=settings.topic_prefix, session_expiry_s=0,
        tls=TlsSettings(enabled=True, ca_file=layout.pki.ca_cert))
    server: ImageServer | None = None
    try:
        if args.url:
            url = args.url
        else:
            server = ImageServer(image, layout.pki.server_cert, layout.pki.server_key,
                                 port=args.port).start()
            url = server.url(args.host or settings.server_names[0])
        try:
            payload = ota_command(url, image)
        except ValueError as exc:
            raise BrokerToolError(str(exc)) from exc
        send_command(mqtt_settings, args.device_id, payload)
        print(f"sent ota to {args.device_id}: {url} sha256 {image.sha256} size {image.size}")
        if server is None:
            return 0
        print(f"serving the image for up to {args.timeout:g} s; watch the device's status "
              "(ota: downloading, then confirmed after its reboot)")
        if not server.done.wait(args.timeout):
            print("the device did not download the image in time", file=sys.stderr)
            return 1
        print("image downloaded; the device verifies it, reboots and confirms it once it "
              "reaches the broker (or rolls back)")
        return 0
    finally:
        if server is not None:
            server.stop()
