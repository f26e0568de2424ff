"""``camstack``: the one command for the whole stack (installed into the venv).

It has the broker's own commands (``python -m broker``: init, run, device, service,
server-cert, render) and the stack's tools on top of them:

Examples:
    camstack init                             # broker init + data/config/*.toml
    camstack device add cam01 --broker-host broker.lan --wifi-ssid farm ...
    camstack service-config [--force] [--compose]
    camstack simulate --devices 3 --fps 2 --duration 60
    camstack status
    camstack demo                             # what `make demo` runs

The services run as ``python -m ingestor``, ``python -m encoder``, ``python -m monitor``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from broker import cli as broker_cli
from broker.accounts import AccountStore
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.run import prepare
from camstack.demo import DemoOptions, run_demo
from camstack.ota import run_ota
from camstack.sim import Faults, Fleet, SimCamera, SimConfig
from camstack.stack import config_dir, ensure_device_account, render_compose, render_local
from config.loader import ConfigError, load_or_exit, load_settings
from config.settings import BrokerSettings, MonitorSettings, MqttSettings, TlsSettings
from monitor.health import evaluate, format_status
from monitor.service import collect_status, now_ms

COMMANDS = ("service-config", "simulate", "status", "demo")


def main(argv: list[str] | None = None) -> int:
    """Run ``camstack``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    p = argparse.ArgumentParser(prog="camstack", description=(__doc__ or "").replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    broker_cli.add_global_options(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_device_commands(broker_cli.add_commands(sub))
    add_commands(sub)
    args = p.parse_args(argv)
    overrides = {"data_dir": str(args.data_dir)} if args.data_dir else {}
    try:
        settings = load_settings(BrokerSettings, args.config, **overrides)
    except ConfigError as exc:
        print("invalid configuration for BrokerSettings:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
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
    ota.add_argument("device_id")
    ota.add_argument("image", type=Path, help="firmware.bin (.pio/build/esp32cam/)")
    ota.add_argument("--url", help="the image is hosted here already (https://...)")
    ota.add_argument("--host", help="host the device reaches this machine by (default: "
                                    "first certificate name)")
    ota.add_argument("--port", type=int, default=8443, help="HTTPS port to serve on")
    ota.add_argument("--account", default="operator", help="service account that sends")
    ota.add_argument("--mqtt-host", default="localhost")
    ota.add_argument("--timeout", type=float, default=600.0,
                     help="seconds to serve the image waiting for the download")


def add_commands(sub: Any) -> None:
    """Add the stack's tool subcommands.

    Args:
        sub: The object ``add_subparsers()`` returned.
    """
    sc = sub.add_parser("service-config",
                        help="render data/config/{ingestor,encoder,monitor}.toml")
    sc.add_argument("--force", action="store_true", help="overwrite existing files")
    sc.add_argument("--compose", action="store_true",
                    help="also render the container configs compose.yaml mounts")

    sim = sub.add_parser("simulate", help="simulated cameras (demo and load generator)")
    sim.add_argument("--devices", type=int, default=3, help="how many cameras")
    sim.add_argument("--device-prefix", default="sim-cam", help="ids are <prefix>01, 02…")
    sim.add_argument("--fps", type=float, default=2.0)
    sim.add_argument("--frames", type=int, help="frames per camera, then stop")
    sim.add_argument("--duration", type=float, help="seconds, then stop")
    sim.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    sim.add_argument("--quality", type=int, default=75, help="JPEG quality")
    sim.add_argument("--chunk-bytes", type=int, default=8192, help="data bytes per chunk")
    sim.add_argument("--cache", type=int, default=0,
                     help="pre-render N frames and cycle them (cheap load generation)")
    sim.add_argument("--window", type=int, default=16, help="frames awaiting PUBACK per camera")
    sim.add_argument("--corrupt-rate", type=float, default=0.0)
    sim.add_argument("--duplicate-rate", type=float, default=0.0)
    sim.add_argument("--drop-every", type=float, help="drop the connection every N seconds")
    sim.add_argument("--host", default="localhost", help="broker host (in the server cert)")
    sim.add_argument("--port", type=int, help="TLS port (default: the configured one)")

    st = sub.add_parser("status", help="print devices, services, storage and alerts")
    st.add_argument("--service-config", type=Path,
                    help="MonitorSettings TOML (default: <data>/config/monitor.toml)")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="broker + ingestor + encoder + simulated cameras")
    defaults = DemoOptions()
    demo.add_argument("--cameras", type=int, default=defaults.cameras)
    demo.add_argument("--fps", type=float, default=defaults.fps)
    demo.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video)
    demo.add_argument("--tls-port", type=int, help="0: any free port (default: configured)")
    demo.add_argument("--local-port", type=int, help="0: any free port (default: configured)")
    demo.add_argument("--timeout", type=float, default=defaults.timeout_s)
    demo.add_argument("--web", action="store_true",
                      help="then keep the stack and the web page up (prints the URL) "
                           "until Ctrl-C")
    demo.add_argument("--web-port", type=int, default=defaults.web_port)


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
    if args.cmd == "simulate":
        return _simulate(args, settings)
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
                           web=args.web, web_port=args.web_port)
        return run_demo(settings, opts)
    raise BrokerToolError(f"unknown command {args.cmd}")  # pragma: no cover


def _status(settings: MonitorSettings, *, as_json: bool) -> int:
    model = collect_status(settings)
    t = now_ms()
    alerts = evaluate(model, settings.alerts, t)
    if as_json:
        print(json.dumps({
            "devices": {d.device: {"state": d.state, "since_ms": d.since_ms,
                                   "last_frame_ms": d.last_frame_ms,
                                   "frames_today": d.frames_today, "status": d.status,
                                   "last_video": d.last_video}
                        for d in model.devices.values()},
            "services": {s.name: {"state": s.state, "status": s.status}
                         for s in model.services.values()},
            "disk": None if model.disk is None else {
                "path": model.disk.path, "percent": round(model.disk.percent, 2),
                "free_bytes": model.disk.free_bytes},
            "alerts": [a.payload() for a in alerts],
        }, indent=2))
    else:
        sys.stdout.write(format_status(model, t, alerts))
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
    if set(devices) - before and store.reload_broker():
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
