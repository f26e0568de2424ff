"""Render the Mosquitto configuration into the data folder and run the broker."""

from __future__ import annotations

import os
import resource
import shutil
import string
import sys
from importlib import resources
from pathlib import Path

from broker.accounts import SERVICES, AccountStore
from broker.cluster import write_cluster
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.pki import ensure_pki
from config.settings import BrokerSettings

GUARD_SO = "camstack_guard.so"
SOURCE_GUARD = Path(__file__).resolve().parent / "plugin" / "build" / GUARD_SO
"""Where ``make -C broker/plugin`` builds the guard plugin."""
INSTALLED_GUARD = Path("/usr/lib/camstack") / GUARD_SO
"""Where the broker image (Dockerfile, target ``broker``) installs it."""
COMPOSE_SERVICE_PORT = 8884
"""Services' TLS listener under Compose: on the compose network only, never published."""
NOFILE_MARGIN = 256
"""Descriptors beyond the device listener's connections: loopback clients, files."""


def guard_plugin_path(settings: BrokerSettings) -> Path:
    """The guard plugin the rendered config loads.

    Args:
        settings: Broker settings (``guard_plugin`` wins when set).

    Returns:
        ``settings.guard_plugin``, else the source tree's build when it exists, else the
        installed path.
    """
    if settings.guard_plugin is not None:
        return settings.guard_plugin
    return SOURCE_GUARD if SOURCE_GUARD.exists() else INSTALLED_GUARD


def guard_lines(settings: BrokerSettings, plugin: Path) -> str:
    """The ``plugin`` and ``plugin_opt_*`` lines of the guard (docs/security.md).

    Args:
        settings: Broker settings (budgets, topic prefix).
        plugin: Path of the ``.so`` as the broker sees it.

    Returns:
        Config text, empty when the guard is disabled.
    """
    if not settings.guard_enabled:
        return "# camstack guard disabled (guard_enabled = false): devices are not metered.\n"
    opts = {
        "msgs_per_s": f"{settings.device_msgs_per_s:g}",
        "burst_msgs": settings.device_burst_msgs,
        "bytes_per_s": settings.device_bytes_per_s,
        "burst_bytes": settings.device_burst_bytes,
        # Every account named <role> or <role>-<suffix> is a service: not metered, may use
        # $share. Device names can never take these forms (broker/accounts.py).
        "service_roles": " ".join(SERVICES),
        "frame_prefix": settings.topic_prefix,
        "max_clients": settings.guard_max_clients,
        "max_kicked": settings.guard_max_kicked,
        "publish_interval_s": f"{settings.guard_publish_interval_s:g}",
    }
    return (
        "\n# camstack guard (broker/plugin): per-device budgets, disconnect without PUBACK\n"
        "# over budget; $share only for services; no retained frames. docs/security.md.\n"
        f"plugin {plugin}\n" + "".join(f"plugin_opt_{k} {v}\n" for k, v in opts.items())
    )


def render_config(settings: BrokerSettings, layout: Layout, *, as_root: bool | None = None,
                  guard_plugin: Path | None = None, service_port: int | None = None) -> str:
    """Render ``mosquitto.conf`` text for ``layout``.

    Args:
        settings: Broker settings.
        layout: Paths as the broker process sees them.
        as_root: Write ``user root``; default: when this process runs as root
            (Mosquitto started as root otherwise drops to ``mosquitto``, which may not
            read a developer's data folder).
        guard_plugin: The guard's path as the broker sees it (a container); default:
            :func:`guard_plugin_path`.
        service_port: Add a TLS listener for services on all interfaces of a container,
            without ``max_connections`` (Compose: not published, so devices cannot reach
            it).

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
    if service_port is not None:
        local += (
            "\n# Services only (Compose network, not published): devices cannot reach it, so\n"
            "# they cannot use up its connections.\n"
            f"listener {service_port} 0.0.0.0\nprotocol mqtt\nuse_username_as_clientid true\n"
            f"cafile {layout.pki.ca_cert}\ncertfile {layout.pki.server_cert}\n"
            f"keyfile {layout.pki.server_key}\ntls_version tlsv1.2\n"
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
        guard=guard_lines(settings, guard_plugin or guard_plugin_path(settings)),
        sys_interval=settings.sys_interval_s,
        tls_max_connections=settings.tls_max_connections,
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
    if settings.engine == "nats":
        write_cluster(settings, layout)
    else:
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


def check_guard_plugin(conf_text: str) -> None:
    """Fail early, with the fix, when the config loads a plugin that is not there.

    Args:
        conf_text: Rendered ``mosquitto.conf``.

    Raises:
        BrokerToolError: When a ``plugin`` line names a missing file.
    """
    for line in conf_text.splitlines():
        if line.startswith("plugin ") and not Path(line.split(None, 1)[1]).is_file():
            raise BrokerToolError(
                f"{line.split(None, 1)[1]} is missing: build the guard plugin with "
                "`make -C broker/plugin` (needs gcc and mosquitto-dev), or set guard_plugin"
            )


def raise_nofile_limit(want: int) -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit (Mosquitto inherits it).

    Args:
        want: Descriptors the broker needs (device listener connections plus a margin);
            a warning goes to stderr when the hard limit is lower.

    Returns:
        The ``(soft, hard)`` limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        print(f"warning: open-file limit {soft} is below tls_max_connections + "
              f"{NOFILE_MARGIN} = {want}; raise it (ulimit -n, LimitNOFILE=) or lower "
              "tls_max_connections, or devices can exhaust the broker's sockets",
              file=sys.stderr)
    return soft, hard


def exec_broker(layout: Layout) -> None:
    """Replace this process with Mosquitto running the rendered config.

    Raises the open-file limit first (soft to hard), so the device listener's
    ``max_connections`` is what runs out, never the broker's descriptors.

    Args:
        layout: A prepared layout.
    """
    binary = mosquitto_binary()
    text = layout.conf_file.read_text(encoding="utf-8")
    check_guard_plugin(text)
    conns = [int(line.split()[1]) for line in text.splitlines()
             if line.startswith("max_connections ")]
    raise_nofile_limit(max(conns, default=1024) + NOFILE_MARGIN)
    os.execv(binary, [str(binary), "-c", str(layout.conf_file)])  # noqa: S606
