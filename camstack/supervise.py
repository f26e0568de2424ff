"""``make up``: the stack under supervisord, rendered into the data folder.

One crashed process must not take the others down, and must come back. supervisord
(PyPI ``supervisor``) does exactly that, in the foreground (``nodaemon``): every
program restarts when it exits (``autorestart``); a program that dies within
``startsecs`` of its start is retried with a growing pause (1 s, 2 s, 3 s …, up to
``startretries`` times) and then left ``FATAL`` with the reason in its log. Ctrl-C
(SIGINT) or SIGTERM stops the programs one by one, highest priority number first, so
the broker goes last and the services' offline statuses are still delivered; then
supervisord exits 0.

Files: ``<data>/run/supervisord.conf`` (rendered at every ``camstack up``),
``<data>/run/supervisor.sock`` (``camstack ctl status``), ``<data>/logs/<program>.log``
(each program's output, rotated), ``<data>/logs/supervisord.log``.
"""

from __future__ import annotations

import os
import sys
import tomllib
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from broker.layout import Layout
from camstack.servers import nats_server_binary, render_nats_conf

PROGRAMS = ("broker", "ingestor", "encoder", "monitor", "web")
CLUSTER_PROGRAM = "nats-node-"
"""``broker.engine = "nats"``: program ``nats-node-<i>`` per node, instead of ``broker``."""
GUARD_PROGRAM = "nats-guard"
"""``broker.engine = "nats"`` with ``[nats.guard] enabled``: ``python -m natsguard``."""
NATS_PROGRAM = "nats"
"""Added when a service config uses ``runner = "jetstream"`` with a loopback server."""


@dataclass(frozen=True)
class Restart:
    """Restart policy shared by every program (supervisord's own knobs)."""

    startsecs: int = 3
    """Seconds a program must stay up to count as started (earlier exits back off)."""
    startretries: int = 10
    """Failed starts in a row, each after a pause one second longer, before FATAL."""
    stopwaitsecs: int = 60
    """Seconds between SIGTERM and SIGKILL when stopping (the ingestor drains)."""


def run_dir(layout: Layout) -> Path:
    """Folder of the supervisor's config, socket and pid file."""
    return layout.data_dir / "run"


def logs_dir(layout: Layout) -> Path:
    """Folder of the programs' logs."""
    return layout.data_dir / "logs"


def conf_path(layout: Layout) -> Path:
    """The rendered ``supervisord.conf``."""
    return run_dir(layout) / "supervisord.conf"


def _quote(value: str) -> str:
    # supervisord reads `environment=` values in double quotes; `%` is its own escape.
    return '"' + value.replace("%", "%%").replace('"', '\\"') + '"'


def _cmd(*argv: str) -> str:
    for a in argv:
        if any(c in a for c in " \t\"'\\"):
            raise ValueError(f"path with spaces or quotes not supported here: {a!r}")
    return " ".join(a.replace("%", "%%") for a in argv)


def local_jetstream_port(layout: Layout, cluster_ports: Collection[int] = ()) -> int | None:
    """The port of the NATS server ``camstack up`` must run, or None.

    That is when the ingestor's or the encoder's rendered config says ``runner =
    "jetstream"`` and its first ``jobqueue.servers`` URL is on this machine's loopback.
    A NATS elsewhere (a cluster, a managed one) is not ours to run, nor is the NATS
    engine's own cluster: a URL on one of ``cluster_ports`` (its nodes' client ports,
    where the job queue runs on that engine) starts no separate server.
    """
    for name in ("ingestor", "encoder"):
        path = layout.data_dir / "config" / f"{name}.toml"
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if doc.get("runner") != "jetstream":
            continue
        servers = (doc.get("jobqueue") or {}).get("servers") or ["nats://127.0.0.1:4222"]
        url = urllib.parse.urlsplit(str(servers[0]))
        port = url.port or 4222
        if url.hostname in ("127.0.0.1", "localhost", "::1") and port not in cluster_ports:
            return port
    return None


def cluster_program(i: int) -> str:
    """The supervisord program name of NATS cluster node ``i``."""
    return f"{CLUSTER_PROGRAM}{i}"


def nats_conf_path(layout: Layout) -> Path:
    """``<data>/nats/nats.conf`` (its JetStream store beside it)."""
    return layout.data_dir / "nats" / "nats.conf"


def render_supervisord(layout: Layout, *, python: str | None = None,
                       broker_config: Path | None = None,
                       restart: Restart | None = None, nats_port: int | None = None,
                       cluster_nodes: int | None = None, guard: bool = False) -> str:
    """The ``supervisord.conf`` text of the local stack.

    Args:
        layout: The prepared data folder (absolute).
        python: Interpreter of the services (default: this one, the venv's).
        broker_config: The broker settings TOML passed to ``camstack --config``.
        restart: Restart policy.
        nats_port: Also run a NATS server with JetStream on this loopback port
            (config :func:`nats_conf_path`).
        cluster_nodes: ``broker.engine = "nats"``: run this many cluster nodes
            (``nats-node-<i>``, each ``python -m broker run --node <i>``) instead of
            ``broker``, with the broker's priority (stopped after the services).
        guard: With ``cluster_nodes``, also run the NATS engine's guard
            (``nats-guard``: ``python -m natsguard``, stopped after the services, before
            the nodes).

    Returns:
        The configuration text.
    """
    py = python or sys.executable
    r = restart or Restart()
    data = layout.data_dir
    run, logs = run_dir(layout), logs_dir(layout)
    broker_args = ["--config", str(broker_config)] if broker_config else []
    commands = {
        "broker": _cmd(py, "-m", "broker", *broker_args, "--data-dir", str(data), "run"),
        "ingestor": _cmd(py, "-m", "ingestor"),
        "encoder": _cmd(py, "-m", "encoder"),
        "monitor": _cmd(py, "-m", "monitor"),
        "web": _cmd(py, "-m", "web"),
    }
    # Start order does not matter (the services retry until the broker answers); stop
    # order does: highest priority first, then NATS, the broker last.
    priority = {"broker": 10, NATS_PROGRAM: 15, "ingestor": 20, "encoder": 30, "monitor": 40,
                "web": 50}
    programs: tuple[str, ...] = PROGRAMS
    if cluster_nodes is not None:
        del commands["broker"]
        nodes = tuple(cluster_program(i) for i in range(cluster_nodes))
        for i, node in enumerate(nodes):
            commands[node] = _cmd(py, "-m", "broker", *broker_args, "--data-dir", str(data),
                                  "run", "--node", str(i))
            priority[node] = priority["broker"]
        programs = (*nodes, *PROGRAMS[1:])
        if guard:
            commands[GUARD_PROGRAM] = _cmd(py, "-m", "natsguard", *broker_args, "--data-dir",
                                           str(data))
            priority[GUARD_PROGRAM] = 12
            programs = (*nodes, GUARD_PROGRAM, *PROGRAMS[1:])
    if nats_port is not None:
        commands[NATS_PROGRAM] = _cmd(str(nats_server_binary()), "-c",
                                      str(nats_conf_path(layout)))
        programs = (*programs, NATS_PROGRAM)
    lines = [
        "; Rendered by `camstack up` at every start: edit the generator, not this file.",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={logs / 'supervisord.log'}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        f"pidfile={run / 'supervisord.pid'}",
        f"childlogdir={logs}",
        f"directory={data}",
        "loglevel=info",
        # Said out loud so supervisord does not warn that it kept root's privileges.
        *(["user=root"] if os.geteuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file={run / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run / 'supervisor.sock'}",
        "",
    ]
    for name in programs:
        env = {"PYTHONUNBUFFERED": "1"}
        if (name not in ("broker", NATS_PROGRAM, GUARD_PROGRAM)
                and not name.startswith(CLUSTER_PROGRAM)):
            env["CAM_CONFIG"] = str(data / "config" / f"{name}.toml")
        lines += [
            f"[program:{name}]",
            f"command={commands[name]}",
            f"environment={','.join(f'{k}={_quote(v)}' for k, v in env.items())}",
            f"priority={priority[name]}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={r.startsecs}",
            f"startretries={r.startretries}",
            "stopsignal=TERM",
            f"stopwaitsecs={r.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={logs / (name + '.log')}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=5",
            "",
        ]
    return "\n".join(lines)


def write_supervisord(layout: Layout, *, broker_config: Path | None = None,
                      restart: Restart | None = None, cluster_nodes: int | None = None,
                      cluster_ports: Collection[int] = (), guard: bool = False) -> Path:
    """Render and write ``<data>/run/supervisord.conf`` (folders created).

    Args:
        layout: The prepared data folder (absolute).
        broker_config: The broker settings TOML passed to ``camstack --config``.
        restart: Restart policy.
        cluster_nodes: NATS cluster nodes to run instead of Mosquitto (engine = nats).
        cluster_ports: Their client ports (a job queue there needs no NATS of its own).
        guard: With ``cluster_nodes``, also run the NATS engine's guard.

    Returns:
        The file.
    """
    for d in (run_dir(layout), logs_dir(layout)):
        d.mkdir(parents=True, exist_ok=True)
    nats_port = local_jetstream_port(layout, cluster_ports)
    if nats_port is not None:
        conf = nats_conf_path(layout)
        (conf.parent / "jetstream").mkdir(parents=True, exist_ok=True)
        conf.write_text(render_nats_conf(conf.parent / "jetstream", nats_port),
                        encoding="utf-8")
    path = conf_path(layout)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_supervisord(layout, broker_config=broker_config, restart=restart,
                                      nats_port=nats_port, cluster_nodes=cluster_nodes,
                                      guard=guard),
                   encoding="utf-8")
    tmp.replace(path)
    return path


def supervisord_argv(conf: Path) -> list[str]:
    """The command that runs supervisord in the foreground on ``conf``."""
    return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)]


def supervisorctl_argv(conf: Path, *args: str) -> list[str]:
    """The command that asks the running supervisord (``status``, ``restart ingestor``)."""
    return [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args]


def exec_supervisord(conf: Path) -> None:
    """Replace this process with supervisord (so make waits on it, and Ctrl-C reaches it).

    Args:
        conf: The rendered config.
    """
    argv = supervisord_argv(conf)
    os.execv(argv[0], argv)  # noqa: S606
