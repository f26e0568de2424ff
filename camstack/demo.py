"""``camstack demo`` (``make demo``): the whole stack with simulated cameras.

Starts the local Mosquitto (TLS, the project's accounts and ACLs), ``python -m
ingestor`` and ``python -m encoder`` on the local file system, provisions a few
simulated cameras, streams until every camera has a video made of this run's frames,
prints the videos and the status table, stops everything and exits 0.

Everything the demo uses lives under ``<data>/demo/``, a data folder of its own (CA,
server certificate, broker accounts and persistence, configs, logs, the simulated
devices' passwords, the storage root): real cameras' data in ``<data>/storage`` never
mixes with demo frames, the demo's accounts never exist on the real broker, and
running the demo again reuses them. Ports: the configured ones when free, otherwise free ones (a
system Mosquitto often holds 1883), said out loud. A broker already running on this
data folder, or processes left by a killed demo, are detected through pid files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from broker.accounts import AccountStore
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.run import mosquitto_binary, prepare, render_config
from camstack.sim import Fleet, SimCamera, SimConfig
from camstack.stack import (
    WEB_ACCOUNT,
    ensure_device_account,
    ensure_service_account,
    service_documents,
    write_documents,
)
from catalog import open_catalog
from config.settings import BrokerSettings, MqttSettings, TlsSettings
from monitor.health import HealthModel, format_bytes, format_status
from monitor.service import apply_storage, now_ms
from mqttclient import connect_blocking, make_client
from objstore import S3Store
from web.users import UsersFile

DEMO_ACCOUNT = "operator-demo"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs."""

    cameras: int = 3
    fps: float = 8.0
    frames_per_video: int = 60
    width: int = 320
    height: int = 240
    playback_fps: float = 10.0
    tls_port: int | None = None
    """None: the configured port, or a free one if it is taken; 0: a free one."""
    local_port: int | None = None
    timeout_s: float = 180.0
    device_prefix: str = "demo-cam"
    web: bool = False
    """Then keep the stack and the web page running (URL printed) until Ctrl-C."""
    web_port: int = 8080
    cloud: bool = False
    """Run on a SeaweedFS (S3) and a PostgreSQL started for the run (``make demo-cloud``)."""
    workers: int = 0
    """With ``cloud``: this many encoder processes pulling jobs from a NATS JetStream
    queue started for the run (0: one encoder on the MQTT runner)."""


@dataclass(frozen=True)
class DemoPaths:
    """Files of one demo under ``<data>/demo``."""

    root: Path

    @property
    def config(self) -> Path:
        """Rendered service configs."""
        return self.root / "config"

    @property
    def logs(self) -> Path:
        """One log per process."""
        return self.root / "logs"

    @property
    def devices(self) -> Path:
        """Passwords of the simulated devices (mode 0600)."""
        return self.root / "devices"

    @property
    def storage(self) -> Path:
        """Storage root of the demo's ingestor and encoder."""
        return self.root / "storage"

    @property
    def persist(self) -> Path:
        """The demo broker's persistence."""
        return self.root / "persist"

    @property
    def broker_conf(self) -> Path:
        """The demo broker's mosquitto.conf."""
        return self.root / "mosquitto.conf"

    @property
    def pids(self) -> Path:
        """Pids of the processes the running demo started."""
        return self.root / "pids.json"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As Mosquitto binds: SO_REUSEADDR, so a TIME_WAIT socket does not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in avoid:
            return port


def choose_port(wanted: int | None, configured: int, label: str, say: Callable[[str], None],
                avoid: set[int]) -> int:
    """The port the demo broker listens on for ``label``.

    Args:
        wanted: Asked for explicitly (0: any free port), or None for the configured one.
        configured: The port from the broker settings.
        label: ``TLS`` or ``local``, for messages.
        say: Progress output.
        avoid: Ports already chosen.

    Returns:
        The port.

    Raises:
        BrokerToolError: When an explicitly asked port is taken.
    """
    if wanted == 0:
        return _free_port("127.0.0.1", avoid)
    port = wanted if wanted is not None else configured
    if port not in avoid and _port_free("127.0.0.1", port):
        return port
    if wanted is not None:
        raise BrokerToolError(f"{label} port {port} is in use; pick another or pass 0")
    chosen = _free_port("127.0.0.1", avoid)
    say(f"note: {label} port {port} is in use (another broker? a system mosquitto often "
        f"holds 1883); the demo broker uses {chosen} instead")
    return chosen


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def check_running_broker(layout: Layout, say: Callable[[str], None]) -> None:
    """Refuse to start beside a broker of this data folder; clear a stale pid file.

    Args:
        layout: Data folder paths.
        say: Progress output.

    Raises:
        BrokerToolError: When a broker of this data folder is running.
    """
    pid_file = layout.broker_dir / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if _alive(pid) and "mosquitto" in _cmdline(pid):
        raise BrokerToolError(
            f"a broker for {layout.data_dir} is already running (pid {pid}, from `make up` or "
            "`camstack run`?); stop it first, or run the demo with another data "
            "folder (make demo DATA=/tmp/camdemo)")
    say(f"note: removing stale pid file {pid_file} (pid {pid} is not running)")
    pid_file.unlink(missing_ok=True)


def reap_leftovers(paths: DemoPaths, say: Callable[[str], None]) -> None:
    """Stop processes a killed demo left running (they would steal the accounts' sessions).

    Args:
        paths: Demo paths.
        say: Progress output.
    """
    try:
        pids = json.loads(paths.pids.read_text())
    except (OSError, ValueError):
        return
    for name, pid in (pids.items() if isinstance(pids, dict) else []):
        marker = "mosquitto" if name == "broker" else f"-m {name}"
        if isinstance(pid, int) and _alive(pid) and marker in _cmdline(pid):
            say(f"note: stopping {name} (pid {pid}) left over from an earlier demo")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    paths.pids.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _events(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                out.append(obj)
    return out


class Child:
    """One process of the stack, its log in a file, in its own session.

    Own session: Ctrl-C reaches only the demo, which then stops the children in order.

    Args:
        name: ``broker``, ``ingestor`` or ``encoder``.
        argv: Command.
        log: Log file.
        env: Extra environment.
    """

    def __init__(self, name: str, argv: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def check(self) -> None:
        """Raise when the process has died.

        Raises:
            BrokerToolError: With the end of its log.
        """
        rc = self.proc.poll()
        if rc is not None:
            raise BrokerToolError(f"{self.name} exited with {rc}; end of {self.log}:\n"
                                  f"{_tail(self.log)}")

    def wait_event(self, event: str, timeout: float) -> None:
        """Wait for a JSON log event.

        Args:
            event: Event name (``ingestor_ready``).
            timeout: Seconds.

        Raises:
            BrokerToolError: When the process dies or the event does not come.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == event for e in _events(self.log)):
                return
            self.check()
            time.sleep(0.1)
        raise BrokerToolError(f"{self.name} did not log {event} in {timeout:.0f}s; end of "
                              f"{self.log}:\n{_tail(self.log)}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed.

        Args:
            timeout: Seconds before SIGKILL.

        Returns:
            The exit code.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _wait_port(port: int, child: Child, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        child.check()
        time.sleep(0.05)
    raise BrokerToolError(f"broker not listening on {port} after {timeout:.0f}s:\n"
                          f"{_tail(child.log)}")


class VideoWatch:
    """The demo's own operator connection: statuses and this run's video events.

    Args:
        settings: Connection settings (account ``operator-demo``).
        prefix: Topic prefix.
        since_ms: Videos whose frames end before this are from an earlier run.
    """

    def __init__(self, settings: MqttSettings, prefix: str, since_ms: int) -> None:
        self.model = HealthModel(prefix, started_ms=now_ms())
        self.videos: dict[str, list[dict[str, Any]]] = {}
        self.since_ms = since_ms
        self.lock = threading.Lock()
        self.client = make_client(settings, clean_session=True)
        self.client.on_message = self._on_message
        connect_blocking(self.client, settings, clean_start=True)
        for topic in (f"{prefix}/+/status", f"{prefix}/+/video", "svc/+/status"):
            self.client.subscribe(topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.model.apply(msg.topic, bytes(msg.payload), now_ms(), retained=bool(msg.retain))
            if msg.topic.endswith("/video") and not msg.retain:
                with contextlib.suppress(ValueError):
                    ev = json.loads(msg.payload)
                    last = ev.get("last_capture_ms", 0) if isinstance(ev, dict) else 0
                    if isinstance(last, int) and last >= self.since_ms:
                        self.videos.setdefault(str(ev.get("device")), []).append(ev)

    def has_video(self, device: str) -> bool:
        """Whether ``device`` has a video of this run."""
        with self.lock:
            return bool(self.videos.get(device))

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _progress(elapsed: float, fleet: Fleet, watch: VideoWatch) -> str:
    cells = []
    for cam in fleet.cameras:
        mark = "video ✓" if watch.has_video(cam.device) else "…"
        cells.append(f"{cam.device} {cam.stats.frames_acked} acked {mark}")
    done = sum(watch.has_video(c.device) for c in fleet.cameras)
    return f"[{elapsed:5.1f}s] " + " | ".join(cells) + f" | videos {done}/{len(fleet.cameras)}"


def _table(watch: VideoWatch, storage: Path) -> str:
    with watch.lock:
        apply_storage(watch.model, storage, now_ms())
        return format_status(watch.model, now_ms())


def _summary(watch: VideoWatch, storage: Path, fleet: Fleet, elapsed: float,
             table: str, *, store: S3Store | None = None) -> tuple[str, bool]:
    lines = ["", f"Videos made in this run ({elapsed:.1f} s):"]
    ok = True
    with watch.lock:
        videos = {d: list(v) for d, v in watch.videos.items()}
    for cam in fleet.cameras:
        for ev in videos.get(cam.device, []):
            path = storage / str(ev.get("location", ""))
            shown: Path | str
            if store is not None:  # the location is the object key
                exists = store.exists(str(ev.get("location", "")))
                shown = f"s3 key {ev.get('location')}"
            else:
                exists = path.is_file() and path.stat().st_size > 0
                try:
                    shown = path.relative_to(Path.cwd())
                except ValueError:
                    shown = path
            ok = ok and exists
            lines.append(f"  {cam.device}: {shown}")
            lines.append(f"      {ev.get('frames')} frames, {ev.get('duration_s')} s, "
                         f"{ev.get('codec')}, {format_bytes(int(ev.get('bytes', 0)))}"
                         f"{'' if exists else '  (FILE MISSING)'}")
        if not videos.get(cam.device):
            ok = False
            lines.append(f"  {cam.device}: no video")
    totals = fleet.totals()
    lines.append(f"Frames sent {totals.frames_sent}, acked by the broker "
                 f"{totals.frames_acked}.")
    lines += ["", table]
    return "\n".join(lines), ok


def demo_console(out: TextIO | None) -> Callable[[str], None]:
    """The demos' ``say``; SIGTERM and SIGHUP become KeyboardInterrupt (a clean stop).

    Args:
        out: Where progress goes (default: stdout).

    Returns:
        ``say(text)``, which never fails: output piped into `head` must not cost the
        clean stop of the children.
    """
    stream = out or sys.stdout

    def say(text: str) -> None:
        with contextlib.suppress(OSError):
            print(text, file=stream, flush=True)

    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
    return say


def run_demo(settings: BrokerSettings, opts: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo from start to clean stop.

    Args:
        settings: Broker settings (data folder, configured ports, topic prefix).
        opts: What to run.
        out: Progress and summary (default: stdout).

    Returns:
        0 when every camera got a video; 1 otherwise.
    """
    say = demo_console(out)
    real = Layout(settings.data_dir.resolve())
    # The demo is a data folder of its own (CA, accounts, broker state, storage): its
    # simulated cameras and its operator never get an account on the real broker.
    settings = settings.model_copy(update={"data_dir": real.data_dir / "demo"})
    layout = Layout(settings.data_dir)
    paths = DemoPaths(layout.data_dir)
    for d in (paths.config, paths.logs, paths.devices, paths.storage, paths.persist):
        d.mkdir(parents=True, exist_ok=True)
    reap_leftovers(paths, say)
    check_running_broker(layout, say)
    retire_demo_accounts(real, settings.topic_prefix, opts.device_prefix, say)
    tls_port = choose_port(opts.tls_port, settings.tls_port, "TLS", say, set())
    local_port = choose_port(opts.local_port, settings.local_port or 1883, "local", say,
                             {tls_port})

    say(f"preparing {layout.data_dir} (its own CA, server certificate, accounts)")
    prepare(settings)
    store = AccountStore(layout.broker_dir, settings.topic_prefix)
    ensure_service_account(layout, store, DEMO_ACCOUNT)
    if opts.web:
        ensure_service_account(layout, store, WEB_ACCOUNT)
    web_port = (choose_port(None, opts.web_port, "web", say, {tls_port, local_port})
                if opts.web else 0)
    devices = [f"{opts.device_prefix}{i:02d}" for i in range(1, opts.cameras + 1)]
    passwords = {d: ensure_device_account(store, d, paths.devices) for d in devices}
    demo_settings = settings.model_copy(update={"tls_port": tls_port, "local_port": local_port,
                                                "tls_bind": "127.0.0.1"})
    conf = render_config(demo_settings, layout).replace(
        f"persistence_location {layout.persist_dir}/", f"persistence_location {paths.persist}/")
    paths.broker_conf.write_text(conf, encoding="utf-8")
    if opts.workers and not opts.cloud:
        raise BrokerToolError("--workers needs --cloud (workers read packs from the store)")
    cloud = _start_cloud(paths, say, opts.workers) if opts.cloud else None
    cloud_sections = cloud.sections if cloud is not None else {}
    encoders = ["encoder"] + [f"encoder-{i}" for i in range(2, opts.workers + 1)]
    for name in encoders[1:]:
        ensure_service_account(layout, store, name)
    docs = service_documents(
        demo_settings, layout, storage_root=paths.storage, host="localhost", port=tls_port,
        log_format="json", metrics_ports={"ingestor": 0, "encoder": 0, "monitor": 0},
        sections={"ingestor": {"ingest": {"frames_per_video": opts.frames_per_video},
                               **cloud_sections},
                  "encoder": {"encode": {"fps": opts.playback_fps}, **cloud_sections},
                  "monitor": {"alerts": {"no_frame_s": 30.0}},
                  # The encoder records and signs every video in the catalog (default:
                  # <storage>/state/catalog.sqlite3) that the web page reads.
                  "web": {"http": {"port": web_port,
                                   "users_file": str(paths.root / "web" / "users.json"),
                                   "session_secret_file": str(paths.root / "web" /
                                                              "session.key")}}},
    )
    write_documents(docs, paths.config, force=True,
                    header="# Rendered by `camstack demo` at every run.\n")

    children: dict[str, Child] = {}
    fleet: Fleet | None = None
    watch: VideoWatch | None = None
    started = time.monotonic()
    try:
        say(f"starting broker: TLS on 127.0.0.1:{tls_port}, local on 127.0.0.1:{local_port} "
            f"(log {paths.logs / 'broker.log'})")
        children["broker"] = Child("broker", [str(mosquitto_binary()), "-c",
                                              str(paths.broker_conf)], paths.logs / "broker.log")
        _save_pids(paths, children)
        _wait_port(tls_port, children["broker"])
        _wait_port(local_port, children["broker"])
        for name in ("ingestor", *encoders):
            module = "encoder" if name.startswith("encoder") else name
            env = {"CAM_CONFIG": str(paths.config / f"{module}.toml")}
            if name != module:
                # One more worker of the pool: the same file, an account of its own (the
                # MQTT client id is the account: a shared one would be kicked).
                env |= {"CAM_MQTT__USERNAME": name, "CAM_MQTT__CLIENT_ID": name,
                        "CAM_MQTT__PASSWORD_FILE": str(layout.service_password_file(name))}
            say(f"starting {name} (config {env['CAM_CONFIG']}, "
                f"log {paths.logs / (name + '.log')})")
            children[name] = Child(name, [sys.executable, "-m", module],
                                   paths.logs / f"{name}.log", env=env)
            _save_pids(paths, children)
        for name in ("ingestor", *encoders):
            module = "encoder" if name.startswith("encoder") else name
            children[name].wait_event(f"{module}_ready", 60)
        say("ingestor and encoder ready" if not opts.workers else
            f"ingestor and {opts.workers} encode worker(s) on NATS JetStream "
            f"{cloud.nats.url if cloud is not None and cloud.nats else ''} ready")

        def mqtt_for(user: str, password: str | None, pw_file: Path | None) -> MqttSettings:
            return MqttSettings(
                host="localhost", port=tls_port, username=user, client_id=user,
                password=password or "", password_file=pw_file,
                topic_prefix=settings.topic_prefix, session_expiry_s=0, reconnect_min_s=0.5,
                reconnect_max_s=2.0, tls=TlsSettings(enabled=True, ca_file=layout.pki.ca_cert))

        run_start_ms = now_ms()
        watch = VideoWatch(mqtt_for(DEMO_ACCOUNT, None,
                                    layout.service_password_file(DEMO_ACCOUNT)),
                           settings.topic_prefix, run_start_ms)
        cfg = SimConfig(fps=opts.fps, width=opts.width, height=opts.height, frames=None,
                        status_interval_s=5.0)
        fleet = Fleet([SimCamera(d, mqtt_for(d, passwords[d], None), cfg) for d in devices])
        say(f"streaming {opts.cameras} simulated cameras at {opts.fps:g} fps, "
            f"{opts.width}x{opts.height}; a video every {opts.frames_per_video} frames")
        fleet.start()
        last_print = 0.0
        deadline = time.monotonic() + opts.timeout_s
        while True:
            for cam in fleet.cameras:
                # Cameras with a video keep streaming: the status table at the end shows
                # every camera online, as it would be in real life.
                if cam.error is not None:
                    raise BrokerToolError(f"simulated camera {cam.device} failed: {cam.error}")
            if all(watch.has_video(c.device) for c in fleet.cameras):
                break
            for child in children.values():
                child.check()
            now = time.monotonic()
            if now - last_print >= 2.0:
                say(_progress(now - started, fleet, watch))
                last_print = now
            if now > deadline:
                raise BrokerToolError(
                    f"no video from every camera after {opts.timeout_s:.0f}s; end of the "
                    f"encoder log:\n{_tail(paths.logs / 'encoder.log')}\nend of the ingestor "
                    f"log:\n{_tail(paths.logs / 'ingestor.log')}")
            time.sleep(0.2)
        say(_progress(time.monotonic() - started, fleet, watch))
        elapsed = time.monotonic() - started
        if opts.web:
            children["web"] = _start_web(paths, web_port, say)
            _save_pids(paths, children)
            _serve_web(paths, children, fleet, say)
        table = _table(watch, paths.storage)  # while the cameras are still online
        fleet.stop(timeout=30)
        summary, ok = _summary(watch, paths.storage, fleet, elapsed, table,
                               store=cloud.store if cloud is not None else None)
        say(summary)
        if cloud is not None:
            ok = cloud.report(say, len(devices)) and ok
        if opts.workers:
            say(_jobs_per_worker(paths.logs, encoders))
    except KeyboardInterrupt:
        say("interrupted")
        ok = False
    except BrokerToolError as exc:
        say(f"demo failed: {exc}")
        ok = False
    finally:
        if fleet is not None:
            fleet.stop(timeout=20)
        if watch is not None:
            watch.close()
        codes = _stop_all(children, ("web", *reversed(encoders), "ingestor", "broker"),
                          paths, cloud, say)
    return _verdict(codes, ok, paths, say, "demo finished: every camera produced a video")


def _jobs_per_worker(logs: Path, encoders: list[str]) -> str:
    """``jobs handled per worker: encoder 3, encoder-2 2`` from their logs."""
    done = {name: sum(1 for e in _events(logs / f"{name}.log")
                      if e.get("event") == "job_handled") for name in encoders}
    return "jobs handled per worker: " + ", ".join(f"{n} {c}" for n, c in done.items())


def _stop_all(children: dict[str, Child], order: Iterable[str], paths: DemoPaths,
              cloud: _Cloud | None, say: Callable[[str], None]) -> dict[str, int | None]:
    """Stop the demo's processes in ``order`` (those started), then its servers.

    Returns:
        Each stopped process's exit code.
    """
    codes: dict[str, int | None] = {}
    for name in order:
        if name in children:
            codes[name] = children[name].stop()
    paths.pids.unlink(missing_ok=True)
    if cloud is not None:
        cloud.close()
    say("stopped " + ", ".join(codes))
    return codes


def _verdict(codes: dict[str, int | None], ok: bool, paths: DemoPaths,
             say: Callable[[str], None], success: str) -> int:
    """Say how the demo ended; its exit code (0 only if it worked and stopped cleanly)."""
    bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGTERM)}
    if bad:
        say(f"unclean exit: {bad}; see {paths.logs}")
    say(success if ok else "demo FAILED")
    return 0 if ok and not bad else 1


class _Cloud:
    """The demo's SeaweedFS and PostgreSQL, started for the run."""

    def __init__(self, base: Path, workers: int = 0) -> None:
        from camstack.servers import (  # noqa: PLC0415
            NatsHandle,
            start_nats,
            start_postgres,
            start_seaweedfs,
        )

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.weed = start_seaweedfs(base / "seaweedfs", bucket="camstack-demo")
        self.nats: NatsHandle | None = None
        try:
            self.pg = start_postgres()
            if workers:
                self.nats = start_nats(base / "nats")
        except BaseException:
            self.weed.stop()
            if self.nats is not None:
                self.nats.stop()
            raise
        self.dsn = self.pg.create_database("camstack_demo")
        s3 = self.weed.s3_settings()
        s3d = s3.model_dump(mode="json", exclude_none=True)
        s3d["secret_access_key"] = s3.secret_access_key.get_secret_value()
        self.sections: dict[str, Any] = {
            "store": {"backend": "s3", "s3": s3d},
            "catalog": {"backend": "postgres", "dsn": self.dsn}}
        if self.nats is not None:
            self.sections["runner"] = "jetstream"
            self.sections["jobqueue"] = {"servers": [self.nats.url]}
        self.store = S3Store(s3)

    def report(self, say: Callable[[str], None], cameras: int) -> bool:
        """Print each video's object key and its database row; True when all are there."""
        cat = open_catalog(self.pg.catalog_settings("camstack_demo"))
        try:
            videos = cat.list_videos()
            say(f"catalog (PostgreSQL): {len(videos)} video row(s); object store "
                f"(SeaweedFS {self.weed.endpoint}, bucket {self.weed.bucket}):")
            ok = len({v.device for v in videos}) >= cameras
            for v in videos:
                there = self.store.exists(v.location)
                ok = ok and there
                row = v.model_dump(mode="json")
                row["signature"] = (row["signature"] or "")[:16] + "..."
                say(f"  {v.location}  ({'in the store' if there else 'MISSING'})")
                say(f"    row: {json.dumps(row, sort_keys=True)}")
            packs = list(self.store.list("packs/"))
            states = sorted({b.state.value for b in cat.list_batches()})
            say(f"packs left in the store: {len(packs)} (batches being encoded); "
                f"batch states: {', '.join(states)}")
            return ok
        finally:
            cat.close()

    def close(self) -> None:
        self.store.close()
        self.pg.close()
        self.weed.stop()
        if self.nats is not None:
            self.nats.stop()


def _start_cloud(paths: DemoPaths, say: Callable[[str], None], workers: int = 0) -> _Cloud:
    say("starting SeaweedFS (S3) and PostgreSQL" + (" and NATS (JetStream)" if workers else "")
        + " for this run")
    cloud = _Cloud(paths.root / "cloud", workers)
    say(f"  S3 {cloud.weed.endpoint} bucket {cloud.weed.bucket}; PostgreSQL on "
        f"{cloud.pg.socket_dir}" + (f"; NATS {cloud.nats.url}" if cloud.nats else ""))
    return cloud


def retire_demo_accounts(real: Layout, prefix: str, device_prefix: str,
                         say: Callable[[str], None]) -> list[str]:
    """Revoke demo accounts an earlier version left in the real data folder's broker.

    Args:
        real: The real data folder (``<data>``, not ``<data>/demo``).
        prefix: Topic prefix.
        device_prefix: Ids of the demo's cameras start with it.
        say: Progress output.

    Returns:
        The accounts revoked.
    """
    if not (real.broker_dir / "accounts.json").exists():
        return []
    store = AccountStore(real.broker_dir, prefix)
    stale = [a.name for a in store.list()
             if a.name == DEMO_ACCOUNT or (a.kind == "device" and a.name.startswith(device_prefix)
                                           and a.name[len(device_prefix):].isdigit())]
    for name in stale:
        store.revoke(name)
    if stale:
        reloaded = store.reload_broker()
        say(f"note: revoked {', '.join(stale)} in {real.broker_dir} (left there by an older "
            f"demo; the demo keeps its own accounts in {real.data_dir / 'demo'})"
            + ("; broker reloaded" if reloaded else ""))
    return stale


def _start_web(paths: DemoPaths, port: int, say: Callable[[str], None]) -> Child:
    """Make sure a ``demo`` operator exists, start ``python -m web``."""
    (paths.root / "web").mkdir(mode=0o750, exist_ok=True)
    users = UsersFile(paths.root / "web" / "users.json")
    password_file = paths.root / "web" / "demo.pass"
    if users.get("demo") is None or not password_file.exists():
        password = secrets.token_urlsafe(12)
        users.add("demo", "operator", password, replace=True)
        password_file.write_text(password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
    web = Child("web", [sys.executable, "-m", "web"], paths.logs / "web.log",
                env={"CAM_CONFIG": str(paths.config / "web.toml")})
    web.wait_event("web_ready", 30)
    password = password_file.read_text(encoding="utf-8").strip()
    say(f"web page: https://localhost:{port}/  user demo, password {password}")
    ca = paths.root.parent / "pki" / "ca.crt"
    say(f"  (its certificate is signed by {ca}; Ctrl-C stops everything)")
    return web


def _serve_web(paths: DemoPaths, children: dict[str, Child], fleet: Fleet,
               say: Callable[[str], None]) -> None:
    """Keep streaming until Ctrl-C; the encoder records each new video in the catalog."""
    try:
        while True:
            for child in children.values():
                child.check()
            for cam in fleet.cameras:
                if cam.error is not None:
                    raise BrokerToolError(f"simulated camera {cam.device} failed: {cam.error}")
            time.sleep(5)
    except KeyboardInterrupt:
        say("stopping (Ctrl-C)")


def _save_pids(paths: DemoPaths, children: dict[str, Child]) -> None:
    paths.pids.write_text(json.dumps({n: c.proc.pid for n, c in children.items()}),
                          encoding="utf-8")
