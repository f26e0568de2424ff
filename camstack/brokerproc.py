"""A real Mosquitto running the project's own configuration, for tests and tools.

Where a Docker engine answers, the broker runs in testcontainers' container of the
``eclipse-mosquitto`` image with the rendered config and data mounted at the same path;
otherwise the local ``mosquitto`` binary runs it on free ports. Either way the config,
PKI, password and ACL files are the ones ``python -m broker`` writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from broker.accounts import AccountStore
from broker.layout import Layout
from broker.run import mosquitto_binary, prepare
from config.settings import BrokerSettings, MqttSettings, TlsSettings
from mqttclient import connect_blocking, make_client

MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float = 10.0,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections.

    Args:
        host: Address.
        port: Port.
        timeout: Longest wait.
        proc: The server expected to listen: its exit ends the wait at once.

    Raises:
        TimeoutError: If it does not within ``timeout`` seconds.
        RuntimeError: If ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode} before listening on "
                               f"{host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s")


def docker_engine_available() -> bool:
    """Whether a Docker engine (not just the client) answers."""
    if os.environ.get("CAM_TEST_NO_DOCKER") or shutil.which("docker") is None:
        return False
    try:
        res = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


@dataclass
class BrokerHandle:
    """One running broker with the project's config in its own data folder."""

    data_dir: Path
    host: str = "127.0.0.1"
    tls_port: int = 0
    local_port: int = 0
    prefix: str = "cam"
    use_docker: bool = False
    proc: subprocess.Popen[bytes] | None = None
    _container: Any = None
    _log: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    """BrokerSettings fields to change (small budgets and queues for one test)."""
    settings: BrokerSettings = field(init=False)
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        self.tls_port = self.tls_port or free_port()
        self.local_port = self.local_port or free_port()
        self.settings = BrokerSettings(
            data_dir=self.data_dir, tls_port=self.tls_port, local_port=self.local_port,
            topic_prefix=self.prefix, run_as_root=os.geteuid() == 0,
            server_names=["localhost", "127.0.0.1"],
            # The guard plugin is built for this host (make -C broker/plugin), not for the
            # eclipse-mosquitto image (musl): the container runs without it.
            **{"guard_enabled": not self.use_docker, **self.overrides},
        )
        self.layout = prepare(self.settings)
        self.store = AccountStore(self.layout.broker_dir, self.prefix)

    @property
    def ca_file(self) -> Path:
        """CA certificate clients trust."""
        return self.layout.pki.ca_cert

    @property
    def log_file(self) -> Path:
        """Broker log."""
        return self.data_dir / "mosquitto.log"

    def start(self) -> None:
        """Start (or restart) the broker on the same ports and data."""
        if self.use_docker:
            self._start_container()
        else:
            self._log = self.log_file.open("ab")
            self.proc = subprocess.Popen(
                [str(mosquitto_binary()), "-c", str(self.layout.conf_file)],
                stdout=self._log, stderr=subprocess.STDOUT,
            )
        wait_port(self.host, self.tls_port)
        wait_port(self.host, self.local_port)

    def _start_container(self) -> None:  # pragma: no cover - needs a Docker engine
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        if self._container is None:
            c = DockerContainer(MOSQUITTO_IMAGE)
            c.with_volume_mapping(str(self.data_dir), str(self.data_dir), "rw")
            c.with_command(f"mosquitto -c {self.layout.conf_file}")
            c.with_kwargs(network_mode="host")
            self._container = c.start()
        else:
            self._container.get_wrapped_container().start()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (saves persistence) or SIGKILL.

        Args:
            kill: Hard kill, as a crash.
        """
        if self.use_docker and self._container is not None:  # pragma: no cover
            self._container.get_wrapped_container().kill(signal="SIGKILL" if kill else "SIGTERM")
            return
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=15)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def reload(self) -> None:
        """SIGHUP: re-read password and ACL files."""
        if self.use_docker and self._container is not None:  # pragma: no cover
            self._container.get_wrapped_container().kill(signal="SIGHUP")
        elif self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # Mosquitto applies the reload on its next loop iteration

    def add_device(self, device_id: str) -> str:
        """Provision a device and reload the broker.

        Returns:
            The device's password.
        """
        password = self.store.add(device_id, "device")
        self.reload()
        return password

    def add_service(self, name: str) -> str:
        """Provision another service account (``encoder-2``, ``operator-test``).

        Its password is written to ``data/secrets/<name>.pass`` like the built-in ones.

        Returns:
            The password.
        """
        password = self.store.add(name, "service")
        pw_file = self.layout.service_password_file(name)
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        self.reload()
        return password

    def revoke(self, device_id: str) -> None:
        """Revoke a device and reload the broker."""
        self.store.revoke(device_id)
        self.reload()

    def service_password(self, name: str) -> str:
        """Password of a service account (ingestor, encoder, operator)."""
        return self.layout.service_password_file(name).read_text().strip()

    def mqtt_settings(self, username: str, password: str | None = None, *,
                      tls: bool = True, client_id: str | None = None) -> MqttSettings:
        """Connection settings a service or tool would use against this broker."""
        if password is None:
            pw_file: Path | None = self.layout.service_password_file(username)
            pw = ""
        else:
            pw_file, pw = None, password
        return MqttSettings(
            host=self.host, port=self.tls_port if tls else self.local_port,
            username=username, password=pw, password_file=pw_file,
            client_id=client_id, topic_prefix=self.prefix, reconnect_min_s=0.2,
            reconnect_max_s=2.0,
            tls=TlsSettings(enabled=tls, ca_file=self.ca_file if tls else None),
        )

    def client(self, username: str, password: str | None = None, *, client_id: str | None = None,
               tls: bool = True, port: int | None = None, clean_start: bool = True,
               manual_ack: bool = False,
               before_connect: Callable[[mqtt.Client], object] | None = None,
               timeout: float = 10.0) -> mqtt.Client:
        """A connected client with its network loop running; the caller disconnects it.

        Args:
            username: Account.
            password: Its password (default: the service password file).
            client_id: Default: a unique one (the broker replaces it with the username).
            tls: Over the TLS listener (else the loopback one).
            port: Another port (a proxy in front of the broker).
            clean_start: Start without the previous session.
            manual_ack: Hold QoS 1 acks until ``client.ack()``.
            timeout: Seconds to wait for CONNACK.
            before_connect: Called with the client before CONNECT, e.g. ``Collector``, so
                messages queued in a persistent session are not delivered before the
                callbacks exist.

        Raises:
            mqttclient.client.MqttConnectError: When the broker refuses.
        """
        s = self.mqtt_settings(username, password, tls=tls, client_id=client_id)
        if port is not None:
            s = s.model_copy(update={"port": port})
        c = make_client(s, client_id=client_id or f"{username}-{time.monotonic_ns()}",
                        manual_ack=manual_ack)
        if before_connect is not None:
            before_connect(c)
        connect_blocking(c, s, clean_start=clean_start, timeout=timeout)
        return c

    def close(self) -> None:
        """Stop for good."""
        self.stop()
        if self._container is not None:  # pragma: no cover
            self._container.stop()
            self._container = None


def start_broker(data_dir: Path, *, use_docker: bool | None = None,
                 **overrides: Any) -> BrokerHandle:
    """Prepare ``data_dir`` and start a broker on free ports.

    Args:
        data_dir: Fresh folder for config, PKI, accounts and persistence.
        use_docker: Force the container or the local binary; default: container when a
            Docker engine answers.
        overrides: BrokerSettings fields to change.

    Returns:
        The running broker.
    """
    if use_docker is None:
        use_docker = docker_engine_available()
    handle = BrokerHandle(data_dir=data_dir, use_docker=use_docker, overrides=overrides)
    handle.start()
    return handle
