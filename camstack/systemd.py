"""``camstack systemd``: units for a machine without Docker (restart always, sandboxed).

One unit per process (``camstack-broker``, ``-ingestor``, ``-encoder``, ``-monitor``) and
``camstack.target`` to start and stop them together. Each runs as a dedicated user,
restarts whatever the exit (with a growing pause where systemd has
``RestartSteps``, 254 and later), never gives up (``StartLimitIntervalSec=0``), and
sees the file system read-only except its data folder (``ProtectSystem=strict`` +
``ReadWritePaths``), with no new privileges, a private /tmp and /dev, no home folders,
no kernel or control-group writes and no capabilities.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNITS = ("broker", "ingestor", "encoder", "monitor", "web")
DESCRIPTIONS = {
    "broker": "camstack MQTT broker (Mosquitto, TLS, per-device accounts)",
    "ingestor": "camstack ingestor (frames to durable storage, batches)",
    "encoder": "camstack encoder (batches to H.264 MP4)",
    "monitor": "camstack monitor (alert rules, retained alerts)",
    "web": "camstack web page (cameras, health, videos)",
}
GUARD = "nats-guard"
GUARD_DESCRIPTION = "camstack NATS guard (per-device budgets, client ids, bans)"
HOMES = ("/home", "/root", "/run/user")


def systemd_version() -> int | None:
    """The local systemd's version, or None when it is not installed."""
    tool = shutil.which("systemctl") or shutil.which("systemd-analyze")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except OSError:
        return None
    m = re.search(r"systemd (\d+)", out)
    return int(m[1]) if m else None


def render_units(data_dir: Path, *, user: str = "camstack", python: str | None = None,
                 broker_config: Path | None = None, restart_steps: bool = True,
                 cluster_nodes: int | None = None, guard: bool = False) -> dict[str, str]:
    """Unit files by name.

    Args:
        data_dir: The data folder (absolute), the only place the units may write.
        user: The dedicated user (and group) the processes run as.
        python: The interpreter with camstack installed (default: this one).
        broker_config: Broker settings file, passed as ``--config``.
        restart_steps: Grow the restart pause (systemd 254+; older ones warn on the keys).
        cluster_nodes: ``broker.engine = "nats"``: one ``camstack-nats-node-<i>`` unit per
            node (``python -m broker run --node <i>``) instead of ``camstack-broker``.
        guard: With ``cluster_nodes``, also ``camstack-nats-guard`` (``python -m
            natsguard``: per-device budgets on the NATS engine, as ``make up`` runs it).

    Returns:
        ``{"camstack-broker.service": "...", ..., "camstack.target": "..."}``.

    Raises:
        ValueError: For a relative data folder or paths systemd would split.
    """
    py = python or sys.executable
    if not data_dir.is_absolute():
        raise ValueError(f"the data folder must be absolute, not {data_dir}")
    for p in (str(data_dir), py, str(broker_config or "")):
        if any(c.isspace() for c in p) or "%" in p:
            raise ValueError(f"paths with spaces or % are not supported here: {p!r}")
    in_home = any(str(p).startswith(HOMES) for p in (data_dir, py))
    broker_args = f" --config {broker_config}" if broker_config else ""
    units: dict[str, str] = {}
    brokers = (["broker"] if cluster_nodes is None
               else [f"nats-node-{i}" for i in range(cluster_nodes)])
    descriptions = {**DESCRIPTIONS, **{
        b: f"camstack NATS cluster node {b.rsplit('-', 1)[1]} (MQTT over TLS, JetStream)"
        for b in brokers if b != "broker"}, GUARD: GUARD_DESCRIPTION}
    broker_units = " ".join(f"camstack-{b}.service" for b in brokers)
    guards = (GUARD,) if guard and cluster_nodes is not None else ()
    for name in (*brokers, *guards, *UNITS[1:]):
        after = "network-online.target" + ("" if name in brokers else f" {broker_units}")
        if name == "broker":
            exec_start = f"{py} -m broker{broker_args} --data-dir {data_dir} run"
            env = ""
        elif name in brokers:
            exec_start = (f"{py} -m broker{broker_args} --data-dir {data_dir} run --node "
                          f"{name.rsplit('-', 1)[1]}")
            env = ""
        elif name == GUARD:
            exec_start = f"{py} -m natsguard{broker_args} --data-dir {data_dir}"
            env = ""
        else:
            exec_start = f"{py} -m {name}"
            env = f"Environment=CAM_CONFIG={data_dir / 'config' / (name + '.toml')}\n"
        backoff = ("RestartSteps=6\nRestartMaxDelaySec=60\n" if restart_steps else "")
        units[f"camstack-{name}.service"] = f"""\
# Rendered by `camstack systemd`; see docs/operations.md ("systemd").
[Unit]
Description={descriptions[name]}
Wants=network-online.target
After={after}
PartOf=camstack.target
# Never give up restarting (the default stops after 5 starts in 10 s).
StartLimitIntervalSec=0

[Service]
Type=simple
User={user}
Group={user}
WorkingDirectory={data_dir}
{env}Environment=PYTHONUNBUFFERED=1
ExecStart={exec_start}
Restart=always
RestartSec=2
{backoff}KillSignal=SIGTERM
TimeoutStopSec=60
UMask=0027

# Sandboxing: read-only system, writable data folder only.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome={"read-only" if in_home else "yes"}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=camstack.target
"""
    units["camstack.target"] = f"""\
# Rendered by `camstack systemd`: `systemctl enable --now camstack.target` starts all.
[Unit]
Description=camstack (broker, ingestor, encoder, monitor)
Wants={broker_units}{"".join(f" camstack-{g}.service" for g in guards)} \
camstack-ingestor.service camstack-encoder.service camstack-monitor.service

[Install]
WantedBy=multi-user.target
"""
    return units


def write_units(units: dict[str, str], dest: Path) -> list[Path]:
    """Write the units into ``dest`` (created).

    Args:
        units: From :func:`render_units`.
        dest: Folder.

    Returns:
        The files.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in units.items():
        path = dest / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def install_hint(dest: Path, data_dir: Path, user: str) -> str:
    """What to run, as root, to install the units."""
    return f"""\
As root:
  useradd --system --home-dir {data_dir} --shell /usr/sbin/nologin {user}
  chown -R {user}:{user} {data_dir}
  cp {dest}/camstack* /etc/systemd/system/ && systemctl daemon-reload
  systemctl enable --now camstack.target
  systemctl status 'camstack-*'         # journalctl -u camstack-ingestor -f for logs
After `camstack device add/revoke`: systemctl kill -s HUP camstack-broker"""
