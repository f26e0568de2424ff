"""``python -m broker`` with ``broker.engine = "nats"``: init, run, device add/revoke.

A real 3-node cluster started by ``python -m broker run`` (every node a child), the
accounts changed by ``python -m broker device ...``, which must reload every node.
Every wait is for a positive signal: ``/healthz`` and ``/routez``, ``/varz``
``config_load_time``, a CONNACK, a disconnect, the process's exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.brokerproc import wait_port
from camstack.servers import _http_json
from config.loader import to_toml
from tests.integration.test_nats_cluster import Client

pytestmark = pytest.mark.integration

NODES = 3
TIMEOUT = 60.0


def _free(ports: list[int]) -> bool:
    for p in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def free_layout() -> tuple[int, int]:
    """``(mqtt_port_base, port_base)`` whose every port is free now."""
    for attempt in range(200):
        base = 20000 + (os.getpid() * 37 + attempt * 101) % 30000
        mqtt_base, port_base = base, base + 10
        ports = [mqtt_base + i for i in range(NODES)] + [
            port_base + 10 * i + k for i in range(NODES) for k in range(3)]
        if _free(ports):
            return mqtt_base, port_base
    raise RuntimeError("no free port layout")


class Cluster:
    """What the test needs to reach the cluster ``python -m broker run`` started."""

    def __init__(self, data: Path, mqtt_base: int, port_base: int) -> None:
        self.data, self.mqtt_base, self.port_base = data, mqtt_base, port_base
        self.ca_file = data / "pki" / "ca.crt"

    def mqtt_port(self, i: int) -> int:
        return self.mqtt_base + i

    def http(self, i: int, path: str) -> tuple[int, Any]:
        return _http_json(f"http://127.0.0.1:{self.port_base + 10 * i + 2}{path}")

    def ready(self, i: int) -> bool:
        status, body = self.http(i, "/healthz")
        if status != 200 or (body or {}).get("status") != "ok":
            return False
        routes = (self.http(i, "/routez")[1] or {}).get("routes") or []
        return len({r.get("remote_name") for r in routes} - {None}) >= NODES - 1

    def load_times(self) -> list[Any]:
        return [(self.http(i, "/varz")[1] or {}).get("config_load_time")
                for i in range(NODES)]


def wait_for(pred: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def broker_cmd(tmp_path: Path) -> Iterator[tuple[list[str], Cluster]]:
    mqtt_base, port_base = free_layout()
    cfg = tmp_path / "broker.toml"
    cfg.write_text(to_toml({
        "engine": "nats", "server_names": ["localhost", "127.0.0.1", "camhub.test"],
        "tls_bind": "127.0.0.1",
        "nats": {"nodes": NODES, "mqtt_port_base": mqtt_base, "port_base": port_base}}),
        encoding="utf-8")
    data = tmp_path / "data"
    yield ([sys.executable, "-m", "broker", "--config", str(cfg), "--data-dir", str(data)],
           Cluster(data, mqtt_base, port_base))


def broker(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_init_run_add_and_revoke_reload_every_node(
        broker_cmd: tuple[list[str], Cluster], tmp_path: Path) -> None:
    cmd, cluster = broker_cmd
    res = broker(cmd, "init")
    assert res.returncode == 0, res.stderr
    for i in range(NODES):
        conf = (cluster.data / "nats" / f"node-{i}" / "nats.conf").read_text()
        assert f"{cluster.mqtt_base + i}" in conf and "include" in conf
    assert (cluster.data / "broker" / "nats-accounts.conf").exists()
    bad = broker(cmd, "run", "--node", str(NODES))
    assert bad.returncode == 1 and "--node 3" in bad.stderr
    run = subprocess.Popen([*cmd, "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    clients: list[Client] = []
    try:
        wait_for(lambda: all(cluster.ready(i) for i in range(NODES)), "3 ready nodes")
        for i in range(NODES):
            wait_port("127.0.0.1", cluster.mqtt_port(i), timeout=10)
            assert (cluster.data / "nats" / f"node-{i}" / "nats.pid").exists()
        before = cluster.load_times()
        add = broker(cmd, "device", "add", "natsdev7", "--json", "--wired",
                     "--broker-host", "camhub.test", "--secrets-dir", str(tmp_path / "sec"))
        assert add.returncode == 0, add.stderr
        info = json.loads(add.stdout)
        assert info["port"] == cluster.mqtt_base
        assert info["ports"] == [cluster.mqtt_base + i for i in range(NODES)]
        assert "every running NATS node reloaded (SIGHUP to 3)" in info["reload"]
        header = (tmp_path / "sec" / "natsdev7.h").read_text()
        assert str(cluster.mqtt_base) in header
        wait_for(lambda: all(a != b for a, b in zip(cluster.load_times(), before,
                                                      strict=True)), "every node reloaded")
        # The new account logs in on every node (each one re-read the accounts file).
        for i in range(NODES):
            c = Client(cluster, i, "natsdev7", info["password"],
                       client_id=f"natsdev7-{i}")
            clients.append(c.connected())
        before = cluster.load_times()
        rev = broker(cmd, "device", "revoke", "natsdev7")
        assert rev.returncode == 0 and "reloaded (SIGHUP to 3)" in rev.stdout, rev.stderr
        for c in clients:  # cut off at once, wherever it was connected
            assert c.disconnected.wait(TIMEOUT)
        wait_for(lambda: all(a != b for a, b in zip(cluster.load_times(), before,
                                                      strict=True)), "every node reloaded")
        again = Client(cluster, 2, "natsdev7", info["password"],
                       client_id="natsdev7-again")
        clients.append(again)
        again.wait(lambda: again.connack is not None, "CONNACK")
        assert again.connack in (5, 135)  # 3.1.1 "not authorised" (paho v2 says 135)
        os.kill(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == 0
        out = run.stdout.read() if run.stdout else ""
        assert "nats node 2: mqtt" in out
        wait_for(lambda: not any(cluster.ready(i) for i in range(NODES)), "nodes stopped")
    finally:
        for c in clients:
            c.c.loop_stop()
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
