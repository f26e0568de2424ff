"""The broker's own commands: PKI, accounts, config rendering, the local Mosquitto.

``python -m broker`` runs exactly these; the ``camstack`` command adds the stack's
tools on top (camstack/cli.py). Nothing here knows about services or tools.

Examples:
    python -m broker init                      # CA, server cert, service accounts, config
    python -m broker device add cam01 --json   # new device, prints credentials
    python -m broker device list
    python -m broker device revoke cam01
    python -m broker run                       # foreground Mosquitto on ./data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from broker.accounts import AccountStore
from broker.cluster import (
    accounts_without_hash,
    broker_pid_files,
    cluster_nodes,
    exec_node,
    mqtt_ports,
    run_cluster,
)
from broker.errors import ProvisionError
from broker.layout import Layout
from broker.pki import certificate_names, create_server_cert
from broker.run import exec_broker, prepare, render_config
from broker.secrets import choose_broker_host, render_secrets_header, write_secret_file
from config.loader import ConfigError, load_settings
from config.settings import BrokerSettings

COMMANDS = ("init", "server-cert", "render", "run", "device", "service")


def add_global_options(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--data-dir``, shared by ``python -m broker`` and ``camstack``.

    Args:
        p: The top-level parser.
    """
    p.add_argument("--config", type=Path,
                   help="broker settings file, TOML (default: $CAM_CONFIG, else built-in "
                        "defaults)")
    p.add_argument("--data-dir", type=Path,
                   help="data folder: PKI, accounts, broker state (default: ./data)")


def load_broker_settings(args: argparse.Namespace) -> BrokerSettings | None:
    """BrokerSettings from ``--config``/``$CAM_CONFIG`` and ``--data-dir``.

    Returns:
        The settings, or None after printing every problem (the caller exits 2).
    """
    overrides = {"data_dir": str(args.data_dir)} if args.data_dir else {}
    try:
        return load_settings(BrokerSettings, args.config, **overrides)
    except ConfigError as exc:
        print("invalid configuration for BrokerSettings:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return None


def add_commands(sub: Any) -> Any:
    """Add the broker's subcommands.

    Args:
        sub: The object ``add_subparsers()`` returned.

    Returns:
        The ``device`` command's subparsers, for tools that add device verbs.
    """
    sub.add_parser("init", help="create the CA, the server certificate, the service accounts "
                                "and the broker's configuration (idempotent)")
    cert = sub.add_parser("server-cert", help="re-issue the server certificate")
    cert.add_argument("names", nargs="+", help="DNS names / IPs for the certificate")
    sub.add_parser("render", help="print the broker's rendered configuration")
    run = sub.add_parser("run", help="prepare and run the broker in the foreground "
                                     "(Mosquitto, or every NATS node with engine = nats)")
    run.add_argument("--node", type=int, default=None,
                     help="engine = nats: become this one node (0-based; what supervisord "
                          "runs, one program per node)")

    dev = sub.add_parser("device", help="device accounts").add_subparsers(dest="dcmd",
                                                                          required=True)
    add = dev.add_parser("add", help="add a device; prints its credentials once")
    add.add_argument("device_id")
    add.add_argument("--json", action="store_true", help="machine-readable output")
    add.add_argument("--broker-host",
                     help="name or address the camera reaches the broker by; must be in the "
                          "server certificate (default: its first name that is not localhost)")
    add.add_argument("--secrets-dir", type=Path, default=Path("firmware/secrets"),
                     help="where the firmware secrets header goes")
    add.add_argument("--wifi-ssid", default="", help="Wi-Fi network the camera joins")
    add.add_argument("--wifi-password", default="", help="its password")
    add.add_argument("--wired", action="store_true",
                     help="the board reaches the network without Wi-Fi (no SSID needed)")
    add.add_argument("--force", action="store_true",
                     help="re-add a revoked device (new password) or overwrite an existing "
                          "secrets header")
    add.add_argument("--no-reload", action="store_true",
                     help="do not ask the running broker to reload its accounts")
    svc = sub.add_parser("service", help="service accounts").add_subparsers(dest="scmd",
                                                                             required=True)
    sadd = svc.add_parser("add", help="another worker or person: encoder-2, operator-alice")
    sadd.add_argument("name")
    sadd.add_argument("--no-reload", action="store_true",
                      help="do not ask the running broker to reload its accounts")
    svc.add_parser("list", help="list service accounts")
    srv = svc.add_parser("revoke", help="revoke a service account")
    srv.add_argument("name")
    srv.add_argument("--no-reload", action="store_true",
                     help="do not ask the running broker to reload its accounts")
    ls = dev.add_parser("list", help="list devices")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--all", action="store_true", help="include revoked devices")
    rv = dev.add_parser("revoke", help="revoke a device; it is disconnected at once")
    rv.add_argument("device_id")
    rv.add_argument("--no-reload", action="store_true",
                    help="do not ask the running broker to reload its accounts")
    return dev


def _reload_note(store: AccountStore, skip: bool,
                 settings: BrokerSettings | None = None) -> str:
    if skip:
        return "broker not signalled (--no-reload)"
    layout = Layout(settings.data_dir.resolve()) if settings is not None else None
    pid_files = (broker_pid_files(settings, layout)
                 if settings is not None and layout is not None else None)
    if store.reload_broker(pid_files):
        if settings is not None and settings.engine == "nats":
            return f"every running NATS node reloaded (SIGHUP to {len(pid_files or [])})"
        return "broker reloaded (SIGHUP)"
    return ("no local broker running; a running one needs SIGHUP "
            "(docker compose kill -s SIGHUP broker)")


def run_command(args: argparse.Namespace, settings: BrokerSettings) -> int:
    """Run one of :data:`COMMANDS`.

    Args:
        args: Parsed arguments.
        settings: Broker settings, loaded once by the caller.

    Returns:
        Exit status.

    Raises:
        BrokerToolError: A refused operation (the caller prints it).
    """
    layout = Layout(settings.data_dir.resolve())
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    if args.cmd == "init":
        prepare(settings)
        if settings.engine == "nats":
            nodes = cluster_nodes(settings, layout)
            print(f"prepared {layout.data_dir}: {len(nodes)} NATS node configs under "
                  f"{nodes[0].dir.parent}, accounts {store.nats_accounts}, "
                  f"CA {layout.pki.ca_cert}")
            _warn_without_hash(store)
        else:
            print(f"prepared {layout.data_dir}: config {layout.conf_file}, "
                  f"CA {layout.pki.ca_cert}")
    elif args.cmd == "server-cert":
        create_server_cert(layout.pki, list(args.names))
        print(f"issued {layout.pki.server_cert} for {', '.join(args.names)}; restart the broker")
    elif args.cmd == "render":
        if settings.engine == "nats":
            prepare(settings)
            for node in cluster_nodes(settings, layout):
                sys.stdout.write(f"# {node.conf_file}\n")
                sys.stdout.write(node.conf_file.read_text(encoding="utf-8"))
        else:
            sys.stdout.write(render_config(settings, layout))
    elif args.cmd == "run":
        prepare(settings)
        if settings.engine == "nats":
            _warn_without_hash(store)
            nodes = cluster_nodes(settings, layout)
            if args.node is None:
                return run_cluster(nodes)
            if not 0 <= args.node < len(nodes):
                raise ProvisionError(f"--node {args.node}: the cluster has nodes "
                                     f"0..{len(nodes) - 1} (broker.nats.nodes)")
            exec_node(nodes[args.node])
        elif args.node is not None:
            raise ProvisionError("--node needs broker.engine = \"nats\"")
        exec_broker(layout)
    elif args.cmd == "device":
        return _device(args, settings, layout, store)
    elif args.cmd == "service":
        return _service(args, layout, store, settings)
    return 0


def _warn_without_hash(store: AccountStore) -> None:
    names = accounts_without_hash(store)
    if names:
        print(f"warning: {', '.join(names)} were created before the NATS engine and cannot "
              "log in to it (no bcrypt hash): `device revoke <id>`, then `device add <id> "
              "--force` (and flash the camera again)", file=sys.stderr)


def _service(args: argparse.Namespace, layout: Layout, store: AccountStore,
             settings: BrokerSettings) -> int:
    if args.scmd == "add":
        password = store.add(args.name, "service")
        pw_file = layout.service_password_file(args.name)
        write_secret_file(pw_file, password + "\n")
        note = _reload_note(store, args.no_reload, settings)
        print(f"added {args.name}; password in {pw_file}; {note}")
    elif args.scmd == "list":
        for a in store.list():
            if a.kind == "service":
                print(f"{a.name:32} created {a.created}")
    elif args.scmd == "revoke":
        store.revoke(args.name)
        layout.service_password_file(args.name).unlink(missing_ok=True)
        print(f"revoked {args.name}; {_reload_note(store, args.no_reload, settings)}")
    return 0


def _device(args: argparse.Namespace, settings: BrokerSettings, layout: Layout,
            store: AccountStore) -> int:
    if args.dcmd == "add":
        _device_add(args, settings, layout, store)
    elif args.dcmd == "list":
        devices = [a for a in store.list(include_revoked=args.all) if a.kind == "device"]
        if args.json:
            print(json.dumps([{"device": a.name, "created": a.created, "revoked": a.revoked}
                              for a in devices]))
        else:
            for a in devices:
                state = f"revoked {a.revoked}" if a.revoked else "active"
                print(f"{a.name:32} created {a.created}  {state}")
    elif args.dcmd == "revoke":
        store.revoke(args.device_id)
        print(f"revoked {args.device_id}; {_reload_note(store, args.no_reload, settings)}")
    return 0



def _device_add(args: argparse.Namespace, settings: BrokerSettings, layout: Layout,
                store: AccountStore) -> None:
    """``device add``: every check first, then the account, then the secrets header."""
    if not layout.pki.ca_cert.exists():
        prepare(settings)
    host, tls_name = choose_broker_host(args.broker_host,
                                        certificate_names(layout.pki.server_cert))
    if not args.wifi_ssid and not args.wired:
        raise ProvisionError("--wifi-ssid is empty: the camera would never join a network. "
                             "Give the Wi-Fi name (and --wifi-password), or --wired for a "
                             "board that reaches the network without Wi-Fi")
    secrets_file = args.secrets_dir / f"{args.device_id}.h"
    old = next((a for a in store.list(include_revoked=True) if a.name == args.device_id), None)
    if not args.force:
        if old is not None and not old.active:
            raise ProvisionError(
                f"{args.device_id} was revoked on {old.revoked}. --force re-enables the id "
                f"with a new password and rewrites {secrets_file} with the settings given "
                "now (the camera must be flashed again); or choose a new id")
        if secrets_file.exists() and (old is None or not old.active):
            raise ProvisionError(
                f"{secrets_file} exists already (another data folder's {args.device_id}?); "
                "--force overwrites it, or use --secrets-dir / another id")
    password = store.add(args.device_id, "device")
    # NATS: the camera's port is node 0's MQTT listener; the other nodes are listed.
    port = settings.nats.mqtt_port_base if settings.engine == "nats" else settings.tls_port
    header = render_secrets_header(
        device_id=args.device_id, password=password, host=host, port=port,
        prefix=settings.topic_prefix, ca_pem=layout.pki.ca_cert.read_text("utf-8"),
        wifi_ssid=args.wifi_ssid, wifi_password=args.wifi_password, tls_name=tls_name,
        wired=args.wired,
    )
    write_secret_file(secrets_file, header)
    note = _reload_note(store, args.no_reload, settings)
    info: dict[str, object] = {
        "device": args.device_id, "username": args.device_id, "password": password,
        "host": host, "port": port, "ca_file": str(layout.pki.ca_cert),
        "secrets_file": str(secrets_file), "reload": note}
    if settings.engine == "nats":
        info["ports"] = mqtt_ports(settings)
    if tls_name:
        info["tls_name"] = tls_name
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:13} {v}")
        if tls_name:
            print(f"The camera reaches {host} and verifies the certificate name {tls_name}.")
        print("The password is shown once; it is stored only as a hash.")
