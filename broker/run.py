"""Render the Mosquitto configuration into the data folder and run the broker."""

from __future__ import annotations

import os
import shutil
import string
from importlib import resources
from pathlib import Path

from broker.accounts import SERVICES, AccountStore
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.pki import ensure_pki
from config.settings import BrokerSettings


def render_config(settings: BrokerSettings, layout: Layout, *, as_root: bool | None = None) -> str:
    """Render ``mosquitto.conf`` text for ``layout``.

    Args:
        settings: Broker settings.
        layout: Paths as the broker process sees them.
        as_root: Write ``user root``; default: when this process runs as root
            (Mosquitto started as root otherwise drops to ``mosquitto``, which may not
            read a developer's data folder).

    Returns:
        The configuration text.
    """
    as_root = settings.run_as_root or (os.geteuid() == 0 if as_root is None else as_root)
    tmpl = string.Template(
        resources.files("broker").joinpath("templates/mosquitto.conf.in").read_text("utf-8")
    )
    local = ""
    if settings.local_port is not None:
        local = (
            "\n# Local tools only: plain TCP on loopback, same accounts and ACLs.\n"
            f"listener {settings.local_port} 127.0.0.1\nprotocol mqtt\n"
            "use_username_as_clientid true\n"
        )
    return tmpl.substitute(
        passwd=layout.broker_dir / "passwd",
        acl=layout.broker_dir / "acl",
        persist_dir=layout.persist_dir,
        autosave_interval=settings.autosave_interval_s,
        pid_file=layout.broker_dir / "mosquitto.pid",
        user_line="user root" if as_root else "",
        max_packet_size=settings.max_packet_bytes,
        max_inflight_messages=settings.max_inflight_messages,
        max_queued_messages=settings.max_queued_messages,
        max_queued_bytes=settings.max_queued_bytes,
        tls_port=settings.tls_port,
        tls_bind=settings.tls_bind,
        ca_file=layout.pki.ca_cert,
        cert_file=layout.pki.server_cert,
        key_file=layout.pki.server_key,
        local_listener=local,
    )


def prepare(settings: BrokerSettings) -> Layout:
    """Create PKI, service accounts and the rendered config under ``settings.data_dir``.

    Idempotent: existing keys, accounts and passwords are kept.

    Args:
        settings: Broker settings.

    Returns:
        The layout that was prepared.
    """
    layout = Layout(settings.data_dir.resolve())
    for d in (layout.broker_dir, layout.persist_dir, layout.secrets_dir):
        d.mkdir(parents=True, exist_ok=True)
    ensure_pki(layout.pki, list(settings.server_names))
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    existing = {a.name for a in store.list()}
    for name in SERVICES:
        pw_file = layout.service_password_file(name)
        if name not in existing or not pw_file.exists():
            if name in existing:
                store.revoke(name)
            password = store.add(name, "service")
            fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(password + "\n")
    store.ensure_rendered()
    layout.conf_file.write_text(render_config(settings, layout), encoding="utf-8")
    return layout


def mosquitto_binary() -> Path:
    """Locate the ``mosquitto`` executable.

    Returns:
        Its path.

    Raises:
        BrokerToolError: If it is not installed.
    """
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return Path(cand)
    raise BrokerToolError("mosquitto not found; install it (apt-get install mosquitto)")


def exec_broker(layout: Layout) -> None:
    """Replace this process with Mosquitto running the rendered config.

    Args:
        layout: A prepared layout.
    """
    binary = mosquitto_binary()
    os.execv(binary, [str(binary), "-c", str(layout.conf_file)])  # noqa: S606
