"""``camstack``: the one command for the whole stack (installed into the venv).

It has the broker's own commands (``python -m broker``: init, run, device, service,
server-cert, render) and the stack's tools on top of them. The module docstring is not
the help text: :data:`DESCRIPTION` is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from broker import cli as broker_cli
from broker.accounts import AccountStore
from broker.cluster import broker_pid_files, cluster_nodes
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.run import prepare
from camstack.catalogcli import COMMANDS as CATALOG_COMMANDS
from camstack.catalogcli import add_catalog_commands, run_catalog_command
from camstack.demo import DemoOptions, run_demo
from camstack.democluster import run_cluster_demo
from camstack.devcmd import (
    BOOL_FIELDS,
    FRAME_SIZES,
    INT_FIELDS,
    INTERVAL_MS,
    JPEG_QUALITY,
    JPEG_QUALITY_LARGE_MIN,
    CommandError,
)
from camstack.devcmd import build as build_command
from camstack.devcmd import payload as command_payload
from camstack.ota import run_ota, send_command
from camstack.sim import Faults, Fleet, SimCamera, SimConfig
from camstack.stack import config_dir, ensure_device_account, render_compose, render_local
from camstack.supervise import (
    GUARD_PROGRAM,
    PROGRAMS,
    cluster_program,
    conf_path,
    exec_supervisord,
    local_jetstream_port,
    logs_dir,
    supervisorctl_argv,
    write_supervisord,
)
from camstack.systemd import install_hint, render_units, systemd_version, write_units
from config.loader import load_or_exit
from config.settings import BrokerSettings, MonitorSettings, MqttSettings, TlsSettings
from monitor.health import device_health, format_status, status_renderables
from monitor.service import collect_status, now_ms, status_alerts

COMMANDS = ("service-config", "simulate", "status", "demo", "up", "ctl", "cmd", "systemd",
            *CATALOG_COMMANDS)

DESCRIPTION = """\
One command for the whole camstack installation (everything lives in the data folder).

examples:
  camstack init                           certificates, accounts, service configs
  camstack server-cert localhost camhub.lan 192.168.1.20
  camstack device add cam01 --broker-host camhub.lan --wifi-ssid farm --wifi-password ...
  camstack up                             the stack in the foreground, restarting what dies
  camstack ctl status                     what `up` runs, with pids and uptimes
  camstack status                         devices, services, storage and alerts
  camstack cmd cam01 set --interval-ms 5000
  camstack demo                           simulated cameras until real videos exist
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unset and off ones say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default in (None, False, "")
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose subcommands show defaults too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``camstack`` command line (tests walk it to check every help text).

    Returns:
        The parser.
    """
    p = Parser(prog="camstack", description=DESCRIPTION)
    broker_cli.add_global_options(p)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add_device_commands(broker_cli.add_commands(sub))
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``camstack``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args = build_parser().parse_args(argv)
    settings = broker_cli.load_broker_settings(args)
    if settings is None:
        return 2
    try:
        if args.cmd in COMMANDS:
            return run_command(args, settings)
        if args.cmd == "device" and args.dcmd == "ota":
            return run_ota(args, settings, Layout(settings.data_dir.resolve()))
        code = broker_cli.run_command(args, settings)
        if args.cmd == "init" and code == 0:
            # The stack's init also writes the services' configs (kept when present).
            for path in render_local(settings):
                print(f"wrote {path}")
        return code
    except BrokerToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def add_device_commands(dev: Any) -> None:
    """Device verbs that need more than the broker: ``device ota``.

    Args:
        dev: The ``device`` command's subparsers.
    """
    ota = dev.add_parser("ota", help="send a device a firmware image (HTTPS, SHA-256)")
    ota.add_argument("device_id", help="the device")
    ota.add_argument("image", type=Path, help="the firmware image PlatformIO built")
    ota.add_argument("--url", help="the image is hosted here already (https://...)")
    ota.add_argument("--host", help="host the device reaches this machine by (default: "
                                    "the server certificate's first name)")
    ota.add_argument("--port", type=int, default=8443, help="HTTPS port to serve on")
    ota.add_argument("--account", default="operator", help="service account that sends")
    ota.add_argument("--mqtt-host", default="localhost", help="broker host to send through")
    ota.add_argument("--timeout", type=float, default=600.0,
                     help="seconds to serve the image waiting for the download")


def add_commands(sub: Any) -> None:
    """Add the stack's tool subcommands.

    Args:
        sub: The object ``add_subparsers()`` returned.
    """
    sc = sub.add_parser("service-config",
                        help="write the ingestor's, encoder's and monitor's settings into "
                             "the data folder")
    sc.add_argument("--force", action="store_true", help="overwrite existing files")
    sc.add_argument("--compose", action="store_true",
                    help="also render the container configs compose.yaml mounts")

    sim = sub.add_parser("simulate", help="simulated cameras (demo and load generator)")
    sim.add_argument("--devices", type=int, default=3, help="how many cameras")
    sim.add_argument("--device-prefix", default="sim-cam", help="ids are <prefix>01, 02…")
    sim.add_argument("--fps", type=float, default=2.0, help="frames per second per camera")
    sim.add_argument("--frames", type=int, help="frames per camera, then stop")
    sim.add_argument("--duration", type=float, help="seconds, then stop")
    sim.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    sim.add_argument("--quality", type=int, default=75, help="JPEG quality")
    sim.add_argument("--chunk-bytes", type=int, default=8192, help="data bytes per chunk")
    sim.add_argument("--cache", type=int, default=0,
                     help="pre-render N frames and cycle them (cheap load generation)")
    sim.add_argument("--window", type=int, default=16, help="frames awaiting PUBACK per camera")
    sim.add_argument("--corrupt-rate", type=float, default=0.0,
                     help="share of chunks sent with a bad checksum")
    sim.add_argument("--duplicate-rate", type=float, default=0.0,
                     help="share of chunks sent twice")
    sim.add_argument("--drop-every", type=float, help="drop the connection every N seconds")
    sim.add_argument("--host", default="localhost", help="broker host (in the server cert)")
    sim.add_argument("--port", type=int, help="TLS port (default: the configured one)")

    add_catalog_commands(sub)

    st = sub.add_parser("status", help="print devices, services, storage and alerts")
    st.add_argument("--service-config", type=Path,
                    help="the monitor's settings file (default: the one in the data folder)")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="broker + ingestor + encoder + simulated cameras")
    defaults = DemoOptions()
    demo.add_argument("--cameras", type=int, default=defaults.cameras,
                      help="simulated cameras")
    demo.add_argument("--fps", type=float, default=defaults.fps,
                      help="frames per second per camera")
    demo.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video,
                      help="frames in each video")
    demo.add_argument("--tls-port", type=int,
                      help="0: any free port (default: the configured one, or a free one)")
    demo.add_argument("--local-port", type=int,
                      help="0: any free port (default: the configured one, or a free one)")
    demo.add_argument("--timeout", type=float, default=defaults.timeout_s,
                      help="seconds to wait for every camera's video")

    up_help = ("run the broker, ingestor, encoder and monitor in the foreground; a process "
               "that dies is restarted, the others keep running (Ctrl-C stops all)")
    up = sub.add_parser("up", help=up_help, description=up_help[0].upper() + up_help[1:] + ".")
    up.add_argument("--render-only", action="store_true",
                    help="prepare the data folder and write the supervisor's settings, "
                         "then print their path instead of starting")
    cmd = sub.add_parser(
        "cmd", help="send a device a command, checked against what its firmware accepts",
        description="Send a command on <prefix>/<device>/cmd (QoS 1, with an operator "
                    "account). It is checked first as the firmware checks it, so a bad "
                    "value is refused here instead of being reported later in the device's "
                    "status (cmd_errors, last_cmd_error).")
    cmd.add_argument("device_id", help="the device")
    cmd.add_argument("action", help="set, reboot, status, or a whole JSON command such as "
                                    "'{\"cmd\":\"set\",\"interval_ms\":1000}'")
    cmd.add_argument("--interval-ms", type=int,
                     help=f"set: milliseconds between frames, {INTERVAL_MS[0]}..{INTERVAL_MS[1]}")
    cmd.add_argument("--frame-size", choices=FRAME_SIZES, metavar="SIZE",
                     help=f"set: {', '.join(FRAME_SIZES)}")
    cmd.add_argument("--jpeg-quality", type=int,
                     help=f"set: {JPEG_QUALITY[0]}..{JPEG_QUALITY[1]}, lower is better "
                          f"(at least {JPEG_QUALITY_LARGE_MIN} from XGA up)")
    for name in BOOL_FIELDS:
        cmd.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                         help=f"set: sensor {name} on or off")
    for name, (lo, hi) in INT_FIELDS.items():
        cmd.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"set: {lo}..{hi}")
    cmd.add_argument("--account", default="operator", help="service account that sends")
    cmd.add_argument("--mqtt-host", default="localhost", help="broker host to send through")
    cmd.add_argument("--port", type=int, help="broker TLS port (default: the configured one)")
    cmd.add_argument("--dry-run", action="store_true", help="check and print, do not send")

    sd = sub.add_parser("systemd", help="write systemd units for the stack's processes (a "
                                         "dedicated user, restart always, sandboxed)")
    sd.add_argument("--out", type=Path,
                    help="folder for the unit files (default: systemd/ in the data folder)")
    sd.add_argument("--user", default="camstack", help="user and group the processes run as")

    ctl = sub.add_parser("ctl", help="ask the running `camstack up`: status, restart "
                                     "ingestor, stop encoder, tail -f monitor …")
    ctl.add_argument("action", nargs=argparse.REMAINDER,
                     help="a supervisorctl command (default: status)")
    demo.add_argument("--cloud", action="store_true",
                      help="on a SeaweedFS (S3) and a PostgreSQL started for the run; prints "
                           "each video's object key and database row")
    demo.add_argument("--workers", type=int, default=0, metavar="N",
                      help="with --cloud: N encode workers pulling jobs from a NATS "
                           "JetStream queue started for the run (default 0: one encoder "
                           "on the MQTT runner)")
    demo.add_argument("--cluster", action="store_true",
                      help="the NATS cluster engine: 3 nodes, 2 ingestors (partitions 0-31, "
                           "32-63), JetStream encode workers (--workers, default 2) on "
                           "SeaweedFS + PostgreSQL (make demo-cluster)")
    demo.add_argument("--web", action="store_true",
                      help="then keep the stack and the web page up (prints the URL) "
                           "until Ctrl-C")
    demo.add_argument("--web-port", type=int, default=defaults.web_port,
                      help="HTTPS port of the demo's web page")


def run_command(args: argparse.Namespace, settings: BrokerSettings) -> int:
    """Run one of :data:`COMMANDS`.

    Args:
        args: Parsed arguments.
        settings: Broker settings.

    Returns:
        Exit status.
    """
    if args.cmd == "service-config":
        prepare(settings)
        written = render_local(settings, force=args.force)
        if args.compose:
            written += render_compose(settings, force=args.force)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print("service configs exist; --force re-renders them")
        return 0
    if args.cmd in CATALOG_COMMANDS:
        return run_catalog_command(args, settings)
    if args.cmd == "simulate":
        return _simulate(args, settings)
    if args.cmd == "up":
        return _up(args, settings)
    if args.cmd == "cmd":
        return _device_command(args, settings)
    if args.cmd == "systemd":
        return _systemd(args, settings)
    if args.cmd == "ctl":
        conf = conf_path(Layout(settings.data_dir.resolve()))
        if not conf.exists():
            raise BrokerToolError(f"no `camstack up` has run on {settings.data_dir}")
        argv = supervisorctl_argv(conf, *(args.action or ["status"]))
        os.execv(argv[0], argv)  # noqa: S606
    if args.cmd == "status":
        layout = Layout(settings.data_dir.resolve())
        path = args.service_config
        if path is None and (config_dir(layout) / "monitor.toml").exists():
            path = config_dir(layout) / "monitor.toml"
        return _status(load_or_exit(MonitorSettings, path), as_json=args.json)
    if args.cmd == "demo":
        opts = DemoOptions(cameras=args.cameras, fps=args.fps,
                           frames_per_video=args.frames_per_video, tls_port=args.tls_port,
                           local_port=args.local_port, timeout_s=args.timeout,
                           web=args.web, web_port=args.web_port, cloud=args.cloud,
                           workers=args.workers)
        if args.cluster:
            if args.web:
                raise BrokerToolError("--cluster does not run the web page (--web)")
            return run_cluster_demo(settings, opts)
        return run_demo(settings, opts)
    raise BrokerToolError(f"unknown command {args.cmd}")  # pragma: no cover


def _device_command(args: argparse.Namespace, settings: BrokerSettings) -> int:
    fields = {"interval_ms": args.interval_ms, "frame_size": args.frame_size,
              "jpeg_quality": args.jpeg_quality,
              **{n: getattr(args, n) for n in (*BOOL_FIELDS, *INT_FIELDS)}}
    try:
        command = build_command(args.action, **fields)
    except CommandError as exc:
        print(f"error: {exc}; nothing sent", file=sys.stderr)
        return 2
    body = command_payload(command)
    topic = f"{settings.topic_prefix}/{args.device_id}/cmd"
    if args.dry_run:
        print(f"{topic} {body.decode()}")
        return 0
    layout = Layout(settings.data_dir.resolve())
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    if not any(a.name == args.device_id and a.kind == "device" for a in store.list()):
        raise BrokerToolError(f"no active device {args.device_id!r} (`camstack device list`)")
    send_command(MqttSettings(
        host=args.mqtt_host, port=args.port or settings.tls_port, username=args.account,
        client_id=args.account, password_file=layout.service_password_file(args.account),
        topic_prefix=settings.topic_prefix, session_expiry_s=0,
        tls=TlsSettings(enabled=True, ca_file=layout.pki.ca_cert)), args.device_id, body)
    print(f"sent {body.decode()} to {topic} (the broker acknowledged it); the device applies "
          "it when connected and reports errors in its status")
    return 0


def _systemd(args: argparse.Namespace, settings: BrokerSettings) -> int:
    layout = prepare(settings)
    for path in render_local(settings):
        print(f"wrote {path}")
    version = systemd_version()
    units = render_units(layout.data_dir, user=args.user,
                         broker_config=args.config.resolve() if args.config else None,
                         restart_steps=version is None or version >= 254,
                         cluster_nodes=settings.nats.nodes if settings.engine == "nats"
                         else None, guard=settings.nats.guard.enabled)
    dest = args.out or layout.data_dir / "systemd"
    for path in write_units(units, dest):
        print(f"wrote {path}")
    hint = install_hint(dest, layout.data_dir, args.user)
    if settings.engine == "nats":
        hint = hint.replace("systemctl kill -s HUP camstack-broker",
                            "systemctl kill -s HUP 'camstack-nats-node-*'")
    print(hint)
    return 0


def _up(args: argparse.Namespace, settings: BrokerSettings) -> int:
    layout = prepare(settings)
    for path in render_local(settings):
        print(f"wrote {path}")
    nodes = settings.nats.nodes if settings.engine == "nats" else None
    ports = ([n.client_port for n in cluster_nodes(settings, layout)]
             if settings.engine == "nats" else [])
    guard = nodes is not None and settings.nats.guard.enabled
    conf = write_supervisord(layout, broker_config=args.config.resolve() if args.config
                             else None, cluster_nodes=nodes, cluster_ports=ports, guard=guard)
    if args.render_only:
        print(conf)
        return 0
    nats = local_jetstream_port(layout, ports) is not None
    programs = [*PROGRAMS, *(["nats"] if nats else [])]
    if nodes is not None:
        programs[:1] = [*(cluster_program(i) for i in range(nodes)),
                        *([GUARD_PROGRAM] if guard else [])]
    print(f"running {', '.join(programs)}; logs in "
          f"{logs_dir(layout)}, "
          "`camstack ctl status` lists them; Ctrl-C stops all", flush=True)
    exec_supervisord(conf)
    return 0  # pragma: no cover - exec does not return


def _status(settings: MonitorSettings, *, as_json: bool) -> int:
    model = collect_status(settings)
    t = now_ms()
    shown = status_alerts(model, settings, t)
    if as_json:
        print(json.dumps({
            "devices": {d.device: {"state": d.state, "since_ms": d.since_ms,
                                   "last_frame_ms": d.last_frame_ms,
                                   "frames_today": d.frames_today, "status": d.status,
                                   "last_video": d.last_video,
                                   "health": device_health(model, d, t).cause}
                        for d in model.devices.values()},
            "services": {s.name: {"state": s.state, "since_ms": s.since_ms, "status": s.status}
                         for s in model.services.values()},
            "observed_from_ms": model.started_ms,
            "disk": None if model.disk is None else {
                "path": model.disk.path, "percent": round(model.disk.percent, 2),
                "free_bytes": model.disk.free_bytes},
            "alerts_source": shown.source,
            "alerts": [a.payload() for a in shown.alerts],
        }, indent=2))
    elif sys.stdout.isatty():
        # Colours and the terminal's width (rich); plain text otherwise.
        console = Console(markup=False, highlight=False, emoji=False)
        for item in status_renderables(model, t, shown.alerts, alerts_note=shown.note):
            console.print(item)
    else:
        sys.stdout.write(format_status(model, t, shown.alerts, alerts_note=shown.note))
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _simulate(args: argparse.Namespace, settings: BrokerSettings) -> int:
    layout = Layout(settings.data_dir.resolve())
    if not layout.pki.ca_cert.exists():
        raise BrokerToolError(f"{layout.data_dir} is not prepared; run `camstack init`")
    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise BrokerToolError(f"--size must look like 320x240, not {args.size!r}") from None
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    pw_dir = layout.data_dir / "sim"
    devices = [f"{args.device_prefix}{i:02d}" for i in range(1, args.devices + 1)]
    before = {a.name for a in store.list()}
    passwords = {d: ensure_device_account(store, d, pw_dir) for d in devices}
    if set(devices) - before and store.reload_broker(broker_pid_files(settings, layout)):
        time.sleep(0.5)  # Mosquitto applies SIGHUP on its next loop
    faults = Faults(drop_every_s=args.drop_every, corrupt_rate=args.corrupt_rate,
                    duplicate_rate=args.duplicate_rate)
    cfg = SimConfig(fps=args.fps, width=width, height=height, quality=args.quality,
                    chunk_data=args.chunk_bytes, frames=args.frames, cache_frames=args.cache,
                    window=args.window, faults=faults)
    port = args.port or settings.tls_port

    def mqtt_for(device: str) -> MqttSettings:
        return MqttSettings(host=args.host, port=port, username=device, client_id=device,
                            password=passwords[device],
                            topic_prefix=settings.topic_prefix, session_expiry_s=0,
                            tls=TlsSettings(enabled=True, ca_file=layout.pki.ca_cert))

    fleet = Fleet([SimCamera(d, mqtt_for(d), cfg) for d in devices])
    stop = threading.Event()
    _stop_on_signals(stop)
    print(f"simulating {len(devices)} cameras ({devices[0]}…) at {args.fps:g} fps, "
          f"{width}x{height}, against {args.host}:{port}; Ctrl-C stops", flush=True)
    started = time.monotonic()
    fleet.start()
    last = 0.0
    while not stop.is_set():
        if all(c.finished.is_set() for c in fleet.cameras):
            break
        if args.duration is not None and time.monotonic() - started >= args.duration:
            break
        if time.monotonic() - last >= 5:
            t = fleet.totals()
            print(f"[{time.monotonic() - started:6.1f}s] sent {t.frames_sent} acked "
                  f"{t.frames_acked} chunks {t.chunks_sent} drops {t.drops}", flush=True)
            last = time.monotonic()
        stop.wait(0.2)
    totals = fleet.stop(timeout=30)
    elapsed = time.monotonic() - started
    print(json.dumps({"elapsed_s": round(elapsed, 2), "frames_per_s":
                      round(totals.frames_acked / elapsed, 1) if elapsed else 0.0,
                      "mbytes_per_s": round(totals.bytes_sent / elapsed / 1e6, 2)
                      if elapsed else 0.0, **vars(totals), "errors_by_device": fleet.errors()}))
    return 1 if fleet.errors() else 0
