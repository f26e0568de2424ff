"""The NATS cluster engine (``broker.engine = "nats"``): config rendering, pure.

Each node of the cluster gets one config file: its name, client port (loopback unless
``client_bind``), HTTP monitoring port (loopback), cluster routes (loopback, or by host
name with TLS and a route password: ``[broker.nats] hosts``), JetStream store, the
MQTT listener with TLS from the project PKI (broker/pki.py) and an ``include`` of the
accounts file. The accounts file is rendered from the same accounts as Mosquitto's
password and ACL files (broker/accounts.py) and is shared by every node: after a device
is added or revoked it is rewritten and every node is told to reload (SIGHUP), no
restart.

What NATS (2.15.1, checked on this machine) needs, and why the rendering looks so:

* NATS's MQTT layer turns topic ``a/b/c`` into subject ``a.b.c``, ``+`` into ``*`` and a
  filter ``a/#`` into two subscriptions, ``a`` and ``a.>``: rights are rendered that way.
* The account's subject mapping ``<prefix>.*.frame`` ->
  ``p.{{partition(64,1)}}.<prefix>.{{wildcard(1)}}.frame`` is applied **before** the
  publish permission is checked, so a device's right must name the mapped subject. A
  device allowed only ``cam.<id>.frame`` gets its PUBACKs while every frame is dropped
  ("Publish Violation" in the server log). The partition is FNV-1a of the id modulo 64
  (contract/partition.py), so each device is allowed exactly its own
  ``p.<n>.cam.<id>.frame``.
* The internal ``$MQTT.`` subjects (sessions, retained messages, QoS 1 consumers) need no
  right in a user's permissions (implicit since nats-io/nats-server#7637, December 2025;
  older servers needed ``$MQTT.sub.>`` and more): on 2.15.1, QoS 1 publish and
  subscribe with a persistent session work with the rights below only.
* Passwords are bcrypt hashes (``$2b$``), which NATS accepts in ``password``; the
  accounts file never holds a clear-text password.
* ``$SYS`` is NATS's system account, not reachable from MQTT: the operator's ``$SYS/#``
  Mosquitto right has no NATS counterpart and is left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.accounts import Account, service_role
from config.settings import JobQueueSettings, LeaseSettings, nats_inbox_prefix
from contract.partition import PARTITION_PREFIX, PARTITIONS, device_partition
from contract.topics import device_acl_patterns, role_acl_lines

ACCOUNT = "CAMSTACK"
"""The NATS account every device and service belongs to (JetStream enabled)."""
SYSTEM_ACCOUNT = "SYS"
"""NATS's system account: its users may ask every node for its connections
(``$SYS.REQ.SERVER.PING.CONNZ``) and close one (``KICK``) — the guard (natsguard/)."""
CLUSTER_NAME = "camstack"


def _token(level: str) -> str:
    if level == "+":
        return "*"
    if not level or any(c in level for c in ". *>#\t\r\n"):
        raise ValueError(f"topic level {level!r} has no NATS subject form")
    return level


def filter_subjects(topic_filter: str) -> list[str]:
    """The NATS subjects of an MQTT topic or filter, as NATS's MQTT layer forms them.

    Args:
        topic_filter: ``a/+/c`` or ``a/#`` (no empty level, no ``.``).

    Returns:
        ``["a.*.c"]``; ``["a", "a.>"]`` for ``a/#``; ``[">"]`` for ``#``.

    Raises:
        ValueError: For a level NATS cannot express.
    """
    levels = topic_filter.split("/")
    if levels[-1] == "#":
        toks = [_token(lv) for lv in levels[:-1]]
        return [".".join(toks), ".".join([*toks, ">"])] if toks else [">"]
    return [".".join(_token(lv) for lv in levels)]


def frame_mapping(prefix: str, partitions: int = PARTITIONS) -> tuple[str, str]:
    """The account's subject mapping of frames: source and destination.

    Args:
        prefix: Device topic prefix.
        partitions: Number of partitions.

    Returns:
        ``("cam.*.frame", "p.{{partition(64,1)}}.cam.{{wildcard(1)}}.frame")``.
    """
    dest = (PARTITION_PREFIX + ".{{partition(" + str(partitions) + ",1)}}."
            + prefix + ".{{wildcard(1)}}.frame")
    return f"{prefix}.*.frame", dest


def _mapped(subject: str, prefix: str, partitions: int) -> str:
    """A frame subject as it is after the mapping; other subjects unchanged."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == prefix and parts[2] == "frame":
        part = "*" if parts[1] == "*" else str(device_partition(parts[1], partitions))
        return f"{PARTITION_PREFIX}.{part}.{subject}"
    return subject


@dataclass
class Permissions:
    """NATS ``publish`` and ``subscribe`` allow lists of one user."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)


def acl_permissions(lines: list[str], prefix: str, partitions: int = PARTITIONS) -> Permissions:
    """NATS permissions from Mosquitto ACL lines (``topic|pattern <access> <filter>``).

    Frame topics become their mapped subjects; ``$``-topics (``$SYS``) are left out.

    Args:
        lines: ACL lines with names already filled in.
        prefix: Device topic prefix.
        partitions: Number of partitions.

    Returns:
        The allow lists, in order, without duplicates.
    """
    perms = Permissions()
    for line in lines:
        kind, access, topic_filter = line.split(" ", 2)
        if kind not in ("topic", "pattern") or topic_filter.startswith("$"):
            continue
        subjects = [_mapped(s, prefix, partitions) for s in filter_subjects(topic_filter)]
        targets = {"read": [perms.subscribe], "write": [perms.publish],
                   "readwrite": [perms.subscribe, perms.publish]}[access]
        for target in targets:
            target.extend(s for s in subjects if s not in target)
    return perms


def account_permissions(acc: Account, prefix: str,
                        partitions: int = PARTITIONS) -> Permissions | None:
    """A device's or service's NATS rights, the same as its Mosquitto ACL.

    Args:
        acc: The account.
        prefix: Device topic prefix.
        partitions: Number of partitions.

    Returns:
        The rights, or None for a service account of no known role.
    """
    if acc.kind == "device":
        lines = [p.replace("%u", acc.name) for p in device_acl_patterns(prefix)]
        return acl_permissions(lines, prefix, partitions)
    role = service_role(acc.name)
    if role is None:
        return None
    rights = role_acl_lines(prefix)[role]
    return acl_permissions([r.format(name=acc.name) for r in rights], prefix, partitions)


JOB_ROLES = frozenset({"ingestor", "encoder"})
"""Service roles that also log in over the NATS protocol, for the encode job queue."""


def lease_permissions(leases: LeaseSettings) -> list[str]:
    """An ingestor's publish rights on the partition-lease bucket (ingestor/leases.py).

    Open the bucket (STREAM.INFO) or create it (STREAM.CREATE), read a key
    (STREAM.MSG.GET: the bucket is made without direct gets), and create, update or
    delete keys (a publish on ``$KV.<bucket>.<key>``). Any ingestor may write any key:
    which partitions an ingestor owns is its config, the bucket is what makes two owners
    see each other.
    """
    b = leases.bucket
    return [f"$JS.API.STREAM.INFO.KV_{b}", f"$JS.API.STREAM.CREATE.KV_{b}",
            f"$JS.API.STREAM.MSG.GET.KV_{b}", f"$KV.{b}.>"]


def job_permissions(role: str, user: str, jobs: JobQueueSettings,
                    leases: LeaseSettings | None = None) -> Permissions:
    """The NATS-protocol rights of a job-queue service: its job stream and nothing else.

    The minimal set found against nats-server 2.15.1 (docs/scaling.md, "The job queue on
    the cluster"): both roles create or update the stream and the shared durable
    consumer at start (``jobqueue.queue.ensure_stream``); the ingestor publishes jobs;
    the encoder pulls them, acks them (``$JS.ACK`` is the reply subject of every
    delivered job) and reads the consumer's depth. Replies come to the user's own inbox.

    Args:
        role: ``ingestor`` or ``encoder``.
        user: The account name (its inbox).
        jobs: Stream, subject prefix and consumer names.
        leases: The ingestor's lease bucket (default: the ``[leases]`` default).

    Returns:
        The rights.
    """
    api, s, c = "$JS.API", jobs.stream, jobs.consumer
    # nats-py creates a durable consumer on the legacy DURABLE.CREATE subject (its
    # config has no consumer name), so CONSUMER.CREATE is not granted.
    publish = [f"{api}.STREAM.INFO.{s}", f"{api}.STREAM.CREATE.{s}",
               f"{api}.STREAM.UPDATE.{s}", f"{api}.CONSUMER.DURABLE.CREATE.{s}.{c}"]
    if role == "ingestor":
        publish.append(f"{jobs.subject_prefix}.>")
        publish += lease_permissions(leases or LeaseSettings())
    else:  # the encoder also exports the consumer's pending count (CONSUMER.INFO)
        publish += [f"{api}.CONSUMER.INFO.{s}.{c}", f"{api}.CONSUMER.MSG.NEXT.{s}.{c}",
                    f"$JS.ACK.{s}.{c}.>"]
    return Permissions(publish=publish, subscribe=[f"{nats_inbox_prefix(user)}.>"])


def _q(value: str) -> str:
    return json.dumps(value)


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _perm_map(allow: list[str]) -> str:
    # An empty allow list would mean "no restriction": deny everything instead.
    return f"{{allow: {_list(allow)}}}" if allow else '{deny: [">"]}'


def render_accounts(accounts: list[Account], prefix: str, partitions: int = PARTITIONS,
                    jobs: JobQueueSettings | None = None, *,
                    system_users: Mapping[str, str] | None = None,
                    banned: Collection[str] = ()) -> tuple[str, list[str]]:
    """The accounts file every node includes.

    Devices and operators log in over MQTT only. Ingestor and encoder accounts may also
    log in over the NATS protocol, for the encode job queue (:func:`job_permissions`,
    added to their MQTT rights).

    Args:
        accounts: All accounts; revoked ones are left out.
        prefix: Device topic prefix.
        partitions: Number of partitions.
        jobs: The job queue's stream, subject prefix and consumer (default: the
            ``[jobqueue]`` defaults).
        system_users: Users of the system account ``SYS``, name -> bcrypt hash (the
            guard). They log in over the NATS protocol only, on the loopback client port.
        banned: Devices the guard bans for now (natsguard/bans.py): left out, so their
            logins are refused and a reload closes their connections. Services never.

    Returns:
        The file text, and the names of active accounts left out because they have no
        bcrypt hash (created before the NATS engine existed: re-add them).
    """
    src, dest = frame_mapping(prefix, partitions)
    users: list[str] = []
    missing: list[str] = []
    for acc in sorted(accounts, key=lambda a: a.name):
        if not acc.active or (acc.kind == "device" and acc.name in banned):
            continue
        perms = account_permissions(acc, prefix, partitions)
        if perms is None:
            continue
        if not acc.nats_hash:
            missing.append(acc.name)
            continue
        # MQTT only, except the job queue's services: for any other account a password
        # is no NATS-protocol login on the client port.
        kinds = ["MQTT"]
        role = service_role(acc.name) if acc.kind == "service" else None
        if role in JOB_ROLES:
            assert role is not None
            kinds.append("STANDARD")
            extra = job_permissions(role, acc.name, jobs or JobQueueSettings())
            perms.publish += [p for p in extra.publish if p not in perms.publish]
            perms.subscribe += [p for p in extra.subscribe if p not in perms.subscribe]
        users.append(
            f"      {{user: {_q(acc.name)}, password: {_q(acc.nats_hash)},\n"
            f"        allowed_connection_types: {_list(kinds)}, permissions: {{\n"
            f"        publish: {_perm_map(perms.publish)}\n"
            f"        subscribe: {_perm_map(perms.subscribe)}\n"
            "      }}")
    sys_users = "".join(
        f"      {{user: {_q(name)}, password: {_q(hashed)},\n"
        # NATS protocol only: no MQTT or websocket login for a system user.
        '        allowed_connection_types: ["STANDARD"]}\n'
        for name, hashed in sorted((system_users or {}).items()))
    text = (
        "# Rendered by camstack (broker/natscluster.py) from accounts.json. Do not edit.\n"
        "accounts {\n"
        f"  {ACCOUNT} {{\n"
        "    jetstream: enabled\n"
        f"    mappings = {{ {_q(src)}: {_q(dest)} }}\n"
        "    users = [\n"
        + "".join(u + "\n" for u in users)
        + "    ]\n"
        "  }\n"
        f"  {SYSTEM_ACCOUNT} {{\n"
        "    users = [\n"
        + sys_users
        + "    ]\n"
        "  }\n"
        "}\n"
        f"system_account: {SYSTEM_ACCOUNT}\n"
    )
    return text, missing


@dataclass(frozen=True)
class NodePlan:
    """One node: its index, name, ports and folder."""

    index: int
    name: str
    client_port: int
    cluster_port: int
    http_port: int
    mqtt_port: int
    dir: Path
    host: str = "127.0.0.1"
    """How the other nodes reach this node's route port (``[broker.nats] hosts``)."""

    @property
    def conf_file(self) -> Path:
        """The node's config file."""
        return self.dir / "nats.conf"

    @property
    def pid_file(self) -> Path:
        """Written by the server."""
        return self.dir / "nats.pid"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.dir / "nats.log"

    @property
    def store_dir(self) -> Path:
        """The JetStream store."""
        return self.dir / "jetstream"


def plan_nodes(base: Path, nodes: int, *, mqtt_port_base: int, port_base: int,
               hosts: list[str] | None = None) -> list[NodePlan]:
    """The fixed port layout of ``NatsClusterSettings`` (docs/configuration.md).

    Args:
        base: Folder of the node folders (``node-<i>``).
        nodes: How many.
        mqtt_port_base: MQTT port of node 0.
        port_base: Client port of node 0.
        hosts: Route host of node i (default: loopback for all).

    Returns:
        One plan per node.
    """
    return [NodePlan(index=i, name=f"camstack-{i}", client_port=port_base + 10 * i,
                     cluster_port=port_base + 10 * i + 1, http_port=port_base + 10 * i + 2,
                     mqtt_port=mqtt_port_base + i, dir=base / f"node-{i}",
                     host=hosts[i] if hosts else "127.0.0.1")
            for i in range(nodes)]


@dataclass(frozen=True)
class TlsFiles:
    """The MQTT listener's certificate, key and CA (broker/pki.py)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


ROUTE_USER = "route"
"""The user every node presents on its routes (``cluster { authorization }``)."""


@dataclass(frozen=True)
class RouteSecurity:
    """TLS and the password of the routes between nodes (``secure_routes``)."""

    password: str
    tls: TlsFiles
    """The route certificate (server and client auth, SANs = the nodes' hosts)."""


def _cluster_block(node: NodePlan, cluster: list[NodePlan], route_bind: str,
                   security: RouteSecurity | None) -> str:
    """``cluster {}``: listen, advertise, routes by host name, authorization, TLS.

    Facts (nats-server 2.15.1, tests/integration/test_nats_routes.py):

    * ``authorization`` holds what a connecting route must present; the routes listed
      here carry it in their URL (``nats-route://user:password@host:port``): the
      authorization block is not used for listed routes.
    * ``tls`` on routes always verifies both ends, so the route certificate needs the
      client-auth usage and each node's host name (the URL's host is checked).
    * ``advertise`` is what the node gossips to the others; without it it would gossip
      its interface address, which the certificate does not name.
    """
    userinfo = f"{ROUTE_USER}:{security.password}@" if security else ""
    routes = [f"nats-route://{userinfo}{n.host}:{n.cluster_port}" for n in cluster]
    lines = ["cluster {", f"  name: {_q(CLUSTER_NAME)}",
             f"  listen: {_q(f'{route_bind}:{node.cluster_port}')}"]
    if node.host != "127.0.0.1":
        lines.append(f"  advertise: {_q(f'{node.host}:{node.cluster_port}')}")
    lines.append(f"  routes: {_list(routes)}")
    if security is not None:
        t = security.tls
        lines += [
            "  authorization {",
            f"    user: {_q(ROUTE_USER)}",
            f"    password: {_q(security.password)}",
            "    timeout: 2",
            "  }",
            "  tls {",
            f"    cert_file: {_q(str(t.cert_file))}",
            f"    key_file: {_q(str(t.key_file))}",
            f"    ca_file: {_q(str(t.ca_file))}",
            "    verify: true",
            "    timeout: 2",
            "  }"]
    return "\n".join([*lines, "}"]) + "\n"


def render_node_config(node: NodePlan, cluster: list[NodePlan], *, tls: TlsFiles,
                       accounts_file: Path, mqtt_bind: str, stream_replicas: int,
                       max_ack_pending: int, ack_wait_s: float,
                       client_bind: str = "127.0.0.1",
                       route_bind: str = "127.0.0.1",
                       route_security: RouteSecurity | None = None) -> str:
    """One node's ``nats.conf``.

    Args:
        node: This node.
        cluster: Every node (routes to all of them by ``host``; a route to itself is
            ignored).
        tls: Certificate, key and CA of the MQTT listener.
        accounts_file: The shared accounts file.
        mqtt_bind: Interface of the MQTT listener.
        stream_replicas: Replicas of the MQTT streams.
        max_ack_pending: Unacknowledged messages per MQTT subscription (and per session).
        ack_wait_s: Redelivery delay of an unacknowledged MQTT QoS 1 delivery.
        client_bind: Interface of the NATS client port.
        route_bind: Interface of the route listener.
        route_security: TLS and password on routes; None: neither (loopback only).

    Returns:
        The file text (it holds the route password in clear: write it 0600).
    """
    cluster_block = ""
    if len(cluster) > 1:
        cluster_block = _cluster_block(node, cluster, route_bind, route_security)
    return (
        "# Rendered by camstack (broker/natscluster.py). Do not edit.\n"
        f"server_name: {_q(node.name)}\n"
        f"listen: {_q(f'{client_bind}:{node.client_port}')}\n"
        f"http: {_q(f'127.0.0.1:{node.http_port}')}\n"
        f"pid_file: {_q(str(node.pid_file))}\n"
        "jetstream {\n"
        f"  store_dir: {_q(str(node.store_dir))}\n"
        "}\n"
        + cluster_block
        + "mqtt {\n"
        f"  listen: {_q(f'{mqtt_bind}:{node.mqtt_port}')}\n"
        "  tls {\n"
        f"    cert_file: {_q(str(tls.cert_file))}\n"
        f"    key_file: {_q(str(tls.key_file))}\n"
        f"    ca_file: {_q(str(tls.ca_file))}\n"
        '    min_version: "1.2"\n'
        "  }\n"
        f"  stream_replicas: {int(stream_replicas)}\n"
        f"  max_ack_pending: {int(max_ack_pending)}\n"
        # NATS drops deliveries past max_ack_pending per session (all its subscriptions)
        # and sends them again only after ack_wait: this bounds that pause.
        f"  ack_wait: {_q(f'{round(ack_wait_s * 1000)}ms')}\n"
        "}\n"
        # nats-server joins an include path to the including file's folder, even an
        # absolute one ("node-0/tmp/…": checked), so the path is made relative.
        f"include {_q(os.path.relpath(accounts_file, node.dir))}\n"
    )
