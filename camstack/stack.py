"""Service configurations of the local default, rendered into the data folder.

``camstack init`` writes, next to the broker's own config, one TOML file per
process of the stack, with the right CA, host, port and password file:

    data/config/ingestor.toml   CAM_CONFIG of ``python -m ingestor``
    data/config/encoder.toml    CAM_CONFIG of ``python -m encoder``
    data/config/monitor.toml    read by ``camstack status`` / ``python -m monitor``
    data/config/web.toml        CAM_CONFIG of ``python -m web`` (the web page)

Existing files are kept (they are the operator's to edit) unless forced. The same
documents, with the paths a container sees, are written for ``compose.yaml`` under
``data/config/compose/``, plus ``data/broker/mosquitto.compose.conf``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from broker.accounts import NATS_GUARD_USER, AccountStore
from broker.cluster import compose_cluster_settings, compose_hosts, write_compose_cluster
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.natscluster import plan_nodes
from broker.pki import certificate_names, create_server_cert
from broker.run import COMPOSE_SERVICE_PORT, INSTALLED_GUARD, render_config
from broker.secrets import write_secret_file
from catalog.signing import load_or_create_key, public_key_pem
from config.loader import to_toml
from config.settings import BrokerSettings
from monitor.service import MONITOR_ACCOUNT, STATUS_ACCOUNT

HEALTH_ACCOUNT = "operator-health"
"""The compose broker health check's account (reads ``$SYS/broker/uptime``)."""

CONTAINER_DATA = Path("/data")
"""Where compose.yaml mounts ./data inside every container."""

COMPOSE_BROKER_HOST = "broker"
"""The broker's name on the compose network (must be in the server certificate)."""

METRICS_PORTS = {"ingestor": 9101, "encoder": 9102, "monitor": 9103}

WEB_ACCOUNT = "operator-web"
"""The web service's own account (the operator role: reads everything, sends commands)."""
WEB_PORT = 8080


def config_dir(layout: Layout) -> Path:
    """Folder of the rendered service configurations."""
    return layout.data_dir / "config"


def _write_password(path: Path, password: str) -> None:
    write_secret_file(path, password + "\n")


def ensure_service_account(layout: Layout, store: AccountStore, name: str) -> Path:
    """Make sure service account ``name`` exists and its password file is there.

    A password is only stored hashed, so an account whose file was lost is re-created
    with a new password.

    Args:
        layout: Data folder paths.
        store: The account store.
        name: ``<role>`` or ``<role>-<suffix>``.

    Returns:
        The password file.
    """
    pw_file = layout.service_password_file(name)
    active = {a.name for a in store.list()}
    if name in active and pw_file.exists():
        return pw_file
    if name in active:
        store.revoke(name)
    _write_password(pw_file, store.add(name, "service"))
    return pw_file


def ensure_device_account(store: AccountStore, device: str, password_dir: Path) -> str:
    """Reuse a simulated device's account, or (re-)create it with a new password.

    Args:
        store: The account store.
        device: Device id.
        password_dir: Where simulated devices keep their passwords (mode 0600).

    Returns:
        The device's password.
    """
    pw_file = password_dir / f"{device}.pass"
    accounts = store.list(include_revoked=True)
    active = {a.name for a in accounts if a.active}
    if device not in active and device in {a.name for a in accounts}:
        # Somebody revoked it on purpose: a simulator must not bring it back unasked.
        raise BrokerToolError(f"{device} was revoked; use other ids (--device-prefix) or "
                              f"re-add it with `camstack device add {device} --force`")
    if device in active and pw_file.exists():
        return pw_file.read_text(encoding="utf-8").strip()
    if device in active:
        store.revoke(device)
    password = store.add(device, "device")
    _write_password(pw_file, password)
    return password


def mqtt_section(settings: BrokerSettings, account: str, *, host: str, port: int,
                 ca_file: Path, password_file: Path, tls: bool = True) -> dict[str, Any]:
    """The ``[mqtt]`` table of a service config.

    Args:
        settings: Broker settings (topic prefix).
        account: Service account.
        host: Broker host as the service reaches it.
        port: Broker port.
        ca_file: CA certificate as the service sees it.
        password_file: Password file as the service sees it.
        tls: TLS on (off only for the loopback listener).

    Returns:
        The table.
    """
    return {"host": host, "port": port, "username": account, "client_id": account,
            "password_file": str(password_file), "topic_prefix": settings.topic_prefix,
            "tls": {"enabled": True, "ca_file": str(ca_file)} if tls else {"enabled": False}}


def service_documents(
    settings: BrokerSettings,
    layout: Layout,
    *,
    storage_root: Path | None = None,
    host: str = "localhost",
    port: int | None = None,
    secrets: dict[str, Path] | None = None,
    log_format: str = "auto",
    metrics_ports: dict[str, int] | None = None,
    metrics_host: str = "127.0.0.1",
    sections: dict[str, dict[str, Any]] | None = None,
    tls: bool = True,
) -> dict[str, dict[str, Any]]:
    """Config documents of the ingestor, encoder and monitor.

    Args:
        settings: Broker settings.
        layout: Paths as the services see them.
        storage_root: Storage root (default: ``<data>/storage``).
        host: Broker host.
        port: Broker TLS port (default: ``settings.tls_port``).
        secrets: Password file per account (default: ``<data>/secrets/<account>.pass``).
        log_format: ``auto``, ``json`` or ``console``.
        metrics_ports: Prometheus port per service (0: pick a free one).
        metrics_host: Interface of the metrics endpoints.
        sections: Extra tables per document, merged (``{"ingestor": {"ingest": {...}}}``).
        tls: TLS towards the broker (off only for the loopback listener).

    Returns:
        ``{"ingestor": {...}, "encoder": {...}, "monitor": {...}}``.
    """
    root = storage_root or layout.storage_root
    ports = {**METRICS_PORTS, **(metrics_ports or {})}
    accounts = {"ingestor": "ingestor", "encoder": "encoder", "monitor": MONITOR_ACCOUNT,
                "web": WEB_ACCOUNT}
    docs: dict[str, dict[str, Any]] = {}
    for name, account in accounts.items():
        pw = (secrets or {}).get(account) or layout.service_password_file(account)
        doc: dict[str, Any] = {
            "mqtt": mqtt_section(settings, account, host=host, port=port or settings.tls_port,
                                 ca_file=layout.pki.ca_cert, password_file=pw, tls=tls),
            "storage": {"root": str(root)},
            "log": {"level": "info", "format": log_format},
        }
        if name in ports:
            doc["metrics"] = {"enabled": True, "host": metrics_host, "port": ports[name]}
        # One SQLite catalog for all three (the default, <storage root>/state/
        # catalog.sqlite3, beside what it describes) and one signing key beside the PKI.
        if name == "encoder":
            doc["signing_key_file"] = str(layout.pki.root / "video-signing.key")
        if name == "web":
            doc.update(web_sections(layout, host="0.0.0.0" if metrics_host == "0.0.0.0"
                                    else "127.0.0.1"))
        for table, values in ((sections or {}).get(name) or {}).items():
            # A table is merged; a top-level key (``runner = "jetstream"``) is set.
            doc[table] = {**doc.get(table, {}), **values} if isinstance(values, dict) \
                else values
        docs[name] = doc
    return docs


def web_sections(layout: Layout, *, host: str = "127.0.0.1",
                 port: int = WEB_PORT) -> dict[str, Any]:
    """The web service's own tables: store, and HTTPS on the project certificate.

    The catalog is left to its default, ``<storage root>/state/catalog.sqlite3``, the
    file the ingestor and the encoder write.

    Args:
        layout: Paths as the web service sees them.
        host: Interface of the page.
        port: Its port.

    Returns:
        ``{"store": ..., "http": ...}``.
    """
    web = layout.data_dir / "web"
    return {
        "store": {"backend": "filesystem", "root": str(layout.data_dir / "objects")},
        "http": {"host": host, "port": port, "tls_cert_file": str(layout.pki.server_cert),
                 "tls_key_file": str(layout.pki.server_key),
                 "users_file": str(web / "users.json"),
                 "session_secret_file": str(web / "session.key"),
                 "video_public_key_file": str(layout.pki.root / "video-signing.pub")},
    }


def _toml_plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list):
        return [_toml_plain(x) for x in v]
    return v


def _merge_into(table: Any, doc: dict[str, Any]) -> None:
    for key, value in doc.items():
        if value is None:
            continue
        if isinstance(value, dict):
            if key not in table or not isinstance(table[key], dict):
                table[key] = tomlkit.table()
            _merge_into(table[key], value)
        elif key not in table or table[key] != _toml_plain(value):
            table[key] = _toml_plain(value)


def merge_toml(existing: str, doc: dict[str, Any]) -> str:
    """Re-render ``doc`` into an existing config, keeping its comments and extra keys.

    Values camstack renders replace the file's; keys and tables only the file has
    (settings the user added) and every comment stay where they are (tomlkit).

    Args:
        existing: The file's text.
        doc: The rendered document.

    Returns:
        The new text.

    Raises:
        BrokerToolError: When the file is not valid TOML (fix it or remove it).
    """
    try:
        parsed = tomlkit.parse(existing)
    except tomlkit.exceptions.ParseError as exc:
        raise BrokerToolError(f"cannot re-render into an invalid TOML file: {exc}") from None
    _merge_into(parsed, doc)
    return tomlkit.dumps(parsed)


def write_documents(docs: dict[str, dict[str, Any]], dest: Path, *, force: bool = False,
                    header: str | None = None) -> list[Path]:
    """Write each document as ``<dest>/<name>.toml``.

    Args:
        docs: From :func:`service_documents`.
        dest: Folder.
        force: Re-render existing files (their comments and extra keys are kept).
        header: Comment lines on top (default: how to re-render).

    Returns:
        The files written (existing ones kept are left out).
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    header = header or ("# Rendered by `camstack service-config`; edit freely, "
                        "`--force` re-renders.\n")
    for name, doc in docs.items():
        path = dest / f"{name}.toml"
        if path.exists() and not force:
            continue
        text = header + to_toml(doc)
        if path.exists():
            text = merge_toml(path.read_text(encoding="utf-8"), doc)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def _shared_state(layout: Layout) -> None:
    """The catalog's folder and the video signing key pair, made before any service runs."""
    (layout.storage_root / "state").mkdir(mode=0o750, parents=True, exist_ok=True)
    key_file = layout.pki.root / "video-signing.key"
    key = load_or_create_key(key_file)
    pub = key_file.with_suffix(".pub")
    if not pub.exists():
        pub.write_bytes(public_key_pem(key))


def render_local(settings: BrokerSettings, *, force: bool = False) -> list[Path]:
    """Accounts and service configs of the local default (``make up``).

    Args:
        settings: Broker settings (its data folder must be prepared).
        force: Re-render existing service configs.

    Returns:
        The config files written.
    """
    layout = Layout(settings.data_dir.resolve())
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    ensure_service_account(layout, store, MONITOR_ACCOUNT)
    ensure_service_account(layout, store, STATUS_ACCOUNT)
    ensure_service_account(layout, store, WEB_ACCOUNT)
    layout.storage_root.mkdir(parents=True, exist_ok=True)
    _shared_state(layout)
    (layout.data_dir / "web").mkdir(mode=0o750, exist_ok=True)
    # The services use the loopback listener: the device listener's max_connections can
    # be used up by devices (docs/security.md), this one cannot.
    if settings.engine == "nats":
        docs = nats_service_documents(settings, layout)
        if not (config_dir(layout) / "ingestor.toml").exists():
            # A new install: one filter for the one ingestor owning every partition, no
            # delivery stall (docs/scaling.md). Never added to an existing config, even
            # with force: switching an existing session deletes what it had queued.
            docs["ingestor"]["ingest"]["one_filter"] = True
    else:
        docs = (service_documents(settings, layout, host="127.0.0.1",
                                  port=settings.local_port, tls=False)
                if settings.local_port is not None else service_documents(settings, layout))
    return write_documents(docs, config_dir(layout), force=force)


NATS_NODE_OF = {"ingestor": 0, "encoder": 1, "monitor": 2, "web": 0}
"""Which node each service connects to (modulo the node count): spread the load."""


def nats_service_documents(settings: BrokerSettings, layout: Layout, *,
                           ingestors: list[tuple[str, list[int]]] | None = None,
                           hosts: list[str] | None = None,
                           **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Service documents for ``broker.engine = "nats"`` (docs/scaling.md).

    MQTT 3.1.1 over TLS to a node's listener on loopback (NATS has no plain listener),
    the ingestor owning every partition (or ``ingestors``: one document per
    ``(account, partitions)``), and ``runner = "jetstream"`` for the ingestor and the
    encoder: NATS has no MQTT shared subscription for the MQTT runner, and the
    JetStream runner needs ``store.backend = "s3"`` (set ``[store]`` in both files).

    Args:
        settings: Broker settings (``[broker.nats]``).
        layout: Paths as the services see them.
        ingestors: ``[(account, partitions), ...]``; default one ``ingestor`` owning all.
        hosts: Node i's host name as the services reach it (default: loopback for all;
            compose.yaml: ``nats-<i>``).
        **kwargs: Passed to :func:`service_documents`.

    Returns:
        ``{"ingestor": ..., "encoder": ..., "monitor": ..., "web": ...}``, plus one
        document per extra ingestor account.
    """
    n = settings.nats
    node_host = hosts or ["127.0.0.1"] * n.nodes
    docs = service_documents(settings, layout, host="127.0.0.1", port=n.mqtt_port_base,
                             **kwargs)
    for name, doc in docs.items():
        node = NATS_NODE_OF.get(name, 0) % n.nodes
        doc["mqtt"]["protocol"] = "3.1.1"
        doc["mqtt"]["host"] = node_host[node]
        doc["mqtt"]["port"] = n.mqtt_port_base + node
    docs["encoder"]["runner"] = "jetstream"
    docs["ingestor"]["runner"] = "jetstream"
    docs["encoder"]["jobqueue"] = {**docs["encoder"].get("jobqueue", {}),
                                   **cluster_jobqueue(settings, layout, "encoder", hosts)}
    base = docs["ingestor"]
    base["jobqueue"] = {**base.get("jobqueue", {}),
                        **cluster_jobqueue(settings, layout, "ingestor", hosts)}
    # One owner per partition: each ingestor claims its partitions on the cluster.
    base["leases"] = {"enabled": True}
    plan = ingestors or [("ingestor", list(range(n.partitions)))]
    for k, (account, parts) in enumerate(plan):
        doc = {**base, "mqtt": {**base["mqtt"], "username": account, "client_id": account,
                                "host": node_host[k % n.nodes],
                                "port": n.mqtt_port_base + k % n.nodes},
               "ingest": {**base.get("ingest", {}), "partitions": parts}}
        if account != "ingestor":
            doc["mqtt"]["password_file"] = str(layout.service_password_file(account))
        doc["jobqueue"] = {**base.get("jobqueue", {}),
                           **cluster_jobqueue(settings, layout, account, hosts)}
        docs[account] = doc
    return docs


def cluster_jobqueue(settings: BrokerSettings, layout: Layout, account: str,
                     hosts: list[str] | None = None) -> dict[str, Any]:
    """The ``[jobqueue]`` of a service on the NATS engine: the cluster itself.

    Every node's client port (loopback), the service's own account and password file
    (the cluster lets ingestor and encoder accounts log in over the NATS protocol, with
    rights on the job stream only: broker/natscluster.py ``job_permissions``), and the
    job stream replicated like the MQTT streams.

    Args:
        settings: Broker settings (``[broker.nats]``).
        layout: Paths as the services see them.
        account: The service account.
        hosts: Node i's host name (default: loopback).

    Returns:
        The table.
    """
    n = settings.nats
    ports = [p.client_port for p in plan_nodes(layout.data_dir, n.nodes,
                                               mqtt_port_base=n.mqtt_port_base,
                                               port_base=n.port_base)]
    node_host = hosts or ["127.0.0.1"] * n.nodes
    return {"servers": [f"nats://{h}:{port}" for h, port in zip(node_host, ports, strict=True)],
            "user": account, "password_file": str(layout.service_password_file(account)),
            "replicas": n.replicas}


def server_cert_names(layout: Layout) -> list[str]:
    """DNS names and IPs in the current server certificate.

    Args:
        layout: Data folder paths.

    Returns:
        The subject alternative names, as text.
    """
    return certificate_names(layout.pki.server_cert)


def render_compose(settings: BrokerSettings, *, force: bool = False) -> list[Path]:
    """Files ``compose.yaml`` mounts: container paths, host ``broker``, Docker secrets.

    The server certificate is re-issued with ``broker`` added when it lacks that name
    (the services reach the broker by its compose service name).

    Args:
        settings: Broker settings (its data folder must be prepared).
        force: Re-render existing service configs.

    Returns:
        The files written.

    Raises:
        BrokerToolError: When the data folder has not been prepared.
    """
    layout = Layout(settings.data_dir.resolve())
    if not layout.pki.server_cert.exists():
        raise BrokerToolError(f"{layout.data_dir} is not prepared; run `camstack init`")
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    ensure_service_account(layout, store, MONITOR_ACCOUNT)
    ensure_service_account(layout, store, HEALTH_ACCOUNT)
    ensure_service_account(layout, store, WEB_ACCOUNT)
    # A missing bind-mount source would be created by Docker, owned by root.
    layout.storage_root.mkdir(parents=True, exist_ok=True)
    _shared_state(layout)
    (layout.data_dir / "web").mkdir(mode=0o750, exist_ok=True)
    # The JetStream store of the `nats` service (profile "jetstream").
    (layout.data_dir / "nats").mkdir(mode=0o750, exist_ok=True)
    written: list[Path] = []
    names = server_cert_names(layout)
    if COMPOSE_BROKER_HOST not in names:
        create_server_cert(layout.pki, [*names, COMPOSE_BROKER_HOST])
        written.append(layout.pki.server_cert)
    inside = Layout(CONTAINER_DATA)
    conf = layout.broker_dir / "mosquitto.compose.conf"
    # The container runs as the data folder's owner (CAM_UID), so no privilege drop.
    text = render_config(settings, inside, as_root=os.geteuid() == 0,
                         guard_plugin=INSTALLED_GUARD, service_port=COMPOSE_SERVICE_PORT)
    # The pid inside a container means nothing on the host, where `device add` would
    # SIGHUP whatever process has that number: keep it inside the container.
    text = text.replace(f"pid_file {inside.broker_dir / 'mosquitto.pid'}",
                        "pid_file /tmp/mosquitto.pid")
    conf.write_text(text, encoding="utf-8")
    written.append(conf)
    secrets = {name: Path(f"/run/secrets/{name.replace('-', '_')}_password")
               for name in ("ingestor", "encoder", MONITOR_ACCOUNT, WEB_ACCOUNT)}
    docs = service_documents(
        settings, inside, host=COMPOSE_BROKER_HOST, port=COMPOSE_SERVICE_PORT, secrets=secrets,
        log_format="json", metrics_host="0.0.0.0",
    )
    written += write_documents(docs, config_dir(layout) / "compose", force=force)
    if settings.engine == "nats":
        written += render_compose_cluster(settings, layout, secrets, force=force)
    return written


COMPOSE_CLUSTER_CONFIG = "compose-cluster"
"""``data/config/compose-cluster/``: the services' configs of the ``cluster`` profile."""


def render_compose_cluster(settings: BrokerSettings, layout: Layout, secrets: dict[str, Path],
                           *, force: bool = False) -> list[Path]:
    """What compose.yaml's ``cluster`` profile mounts (``broker.engine = "nats"``).

    The node configs (broker/cluster.py ``write_compose_cluster``: routes by container
    name with TLS and the route password), the server certificate re-issued with the
    node names when it lacks one (the services verify ``nats-<i>``), and under
    ``data/config/compose-cluster/``: the services' configs on the cluster (MQTT 3.1.1
    to ``nats-<i>``, the job queue on every node's client port) and ``broker.toml``, the
    guard's settings.

    Args:
        settings: Broker settings with ``engine = "nats"``.
        layout: The host's data folder (prepared).
        secrets: Password file per account as the containers see them (Docker secrets).
        force: Re-render existing service configs.

    Returns:
        The files written.
    """
    n = settings.nats
    hosts = compose_hosts(n.nodes)
    written: list[Path] = []
    names = server_cert_names(layout)
    if missing := [h for h in hosts if h not in names]:
        create_server_cert(layout.pki, [*names, *missing])
        written.append(layout.pki.server_cert)
    inside = Layout(CONTAINER_DATA)
    written += write_compose_cluster(settings, layout, inside)
    docs = nats_service_documents(settings, inside, hosts=hosts, secrets=secrets,
                                  log_format="json", metrics_host="0.0.0.0")
    for doc in docs.values():
        if "jobqueue" in doc:  # the same account and secret as its MQTT login
            doc["jobqueue"]["password_file"] = doc["mqtt"]["password_file"]
    # The guard's settings: the operator's broker settings (budgets and all) as the
    # containers see the cluster.
    broker = compose_cluster_settings(settings).model_dump(mode="json", exclude_none=True)
    broker["data_dir"] = str(CONTAINER_DATA)
    broker["nats"].pop("data_dir", None)
    broker["nats"]["guard"].update(
        servers=[f"nats://{h}:{n.port_base + 10 * i}" for i, h in enumerate(hosts)],
        password_file=f"/run/secrets/{NATS_GUARD_USER}_password")
    docs["broker"] = broker
    if not (config_dir(layout) / COMPOSE_CLUSTER_CONFIG / "ingestor.toml").exists():
        # A new install, as for make up: one filter, no delivery stall; never switched
        # on an existing config (that deletes what its session had queued).
        docs["ingestor"]["ingest"]["one_filter"] = True
    written += write_documents(docs, config_dir(layout) / COMPOSE_CLUSTER_CONFIG, force=force)
    return written
