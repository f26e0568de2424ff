"""The NATS engine's guard: every round, every node's connections, the meter, KICKs.

The guard logs in over the NATS protocol as user ``guard`` of the system account
(``SYS``, rendered by broker/natscluster.py). Each round it publishes one
``$SYS.REQ.SERVER.PING.CONNZ`` request (``auth``, account ``CAMSTACK``, a page of
``page_size`` sorted by cid) and collects one reply per node until every node has
answered or ``reply_timeout_s`` passed; a node with more connections than one page is
asked again directly (``$SYS.REQ.SERVER.<id>.CONNZ`` with ``offset``). The counters go to
the pure :class:`natsguard.meter.Meter`; each kick it returns is sent as
``$SYS.REQ.SERVER.<id>.KICK`` ``{"cid": N}`` (nats-server 2.10 or later).

What nats-server 2.15.1 answers (checked against a real node, tests/integration/
test_nats_guard.py): an MQTT connection is listed with ``type: "mqtt"``, ``cid``,
``authorized_user``, ``account``, ``mqtt_client`` (the MQTT client id), ``in_msgs`` (one
per PUBLISH) and ``in_bytes`` (payload plus the subject and the headers NATS's MQTT layer
adds); a KICK of an MQTT connection closes its socket (the client sees the connection
lost, not a DISCONNECT packet), and its reply has no ``error``.

Bans (natsguard/bans.py): a device kicked over budget is also taken out of the accounts
file for what it owes (``AccountStore.set_bans``), and every node is sent
``$SYS.REQ.SERVER.<id>.RELOAD`` (2.15.1: answers every node's own id, there is no
``PING.RELOAD``). Checked on 2.15.1: the reload closes the live MQTT connections of a
user no longer in the file, and its next CONNECT is refused (not authorized). The ban is
lifted (file rewritten, nodes reloaded) at the first round after its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from broker.accounts import AccountStore
from broker.natscluster import ACCOUNT
from config.settings import NatsGuardSettings
from natsguard.bans import Bans
from natsguard.meter import REASONS, Budget, Conn, Kick, Meter, NodeReport, RoundResult

log = structlog.get_logger("natsguard")

PING_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"
MAX_REPLY_MSGS = 1024
KICK_BATCH = 64
"""KICK requests in flight at once."""
"""Replies a round's inbox holds at most (nats-py's pending limit): far above 7 nodes."""


def server_subject(server_id: str, what: str) -> str:
    """``$SYS.REQ.SERVER.<id>.<what>`` (``CONNZ``, ``KICK``)."""
    return f"$SYS.REQ.SERVER.{server_id}.{what}"


async def system_request(nc: NatsClient, subject: str, payload: bytes,
                         timeout: float) -> str | None:
    """One ``$SYS.REQ.SERVER.<id>.<verb>`` request.

    Returns:
        None when the node confirmed, else what went wrong (its ``error``, no answer,
        an unreadable reply).
    """
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
        doc = json.loads(msg.data)
    except (TimeoutError, NatsError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    err = doc.get("error") if isinstance(doc, dict) else "unreadable reply"
    if not err:
        return None
    return str(err.get("description", err)) if isinstance(err, dict) else str(err)


class GuardMetrics:
    """``camstack_natsguard_*``: rounds, kicks, what the meter charged and dropped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("camstack_natsguard_rounds", "Rounds done (CONNZ asked).",
                              registry=r)
        self.kicks = Counter("camstack_natsguard_kicks",
                             "Device connections closed, by reason.", ["reason"], registry=r)
        self.kick_failures = Counter(
            "camstack_natsguard_kick_failures",
            "KICKs a node refused or did not answer (the connection was already gone, or the "
            "node is older than 2.10).", ["reason"], registry=r)
        self.nodes_missing = Counter(
            "camstack_natsguard_nodes_missing",
            "Rounds in which a node did not answer in time (its connections were not metered "
            "that round).", registry=r)
        self.incomplete = Counter(
            "camstack_natsguard_pages_failed",
            "Follow-up CONNZ pages that failed (that node's list was partial).", registry=r)
        self.malformed = Counter("camstack_natsguard_malformed",
                                 "CONNZ replies or entries that could not be read.", registry=r)
        self.untracked = Counter(
            "camstack_natsguard_untracked",
            "Connections not metered because max_connections were tracked.", registry=r)
        self.forgotten = Counter(
            "camstack_natsguard_accounts_forgotten",
            "Device accounts forgotten with a bucket not yet full (max_accounts).", registry=r)
        self.device_msgs = Counter("camstack_natsguard_device_messages",
                                   "Messages charged to device accounts.", registry=r)
        self.device_bytes = Counter("camstack_natsguard_device_bytes",
                                    "Bytes charged to device accounts.", registry=r)
        self.nodes = Gauge("camstack_natsguard_nodes_answering",
                           "Nodes that answered the last round.", registry=r)
        self.connections = Gauge("camstack_natsguard_connections",
                                 "Connections listed in the last round (services included).",
                                 registry=r)
        self.accounts = Gauge("camstack_natsguard_accounts",
                              "Device accounts whose buckets are remembered.", registry=r)
        self.connected = Gauge("camstack_natsguard_connected",
                               "1 while logged in to the cluster.", registry=r)
        self.bans = Counter("camstack_natsguard_bans",
                            "Devices banned (left out of the accounts file), by reason.",
                            ["reason"], registry=r)
        self.unbans = Counter("camstack_natsguard_unbans",
                              "Bans lifted, by reason (recovered, over_limit).", ["reason"],
                              registry=r)
        self.bans_refused = Counter(
            "camstack_natsguard_bans_refused",
            "Bans not made because ban_max_devices devices were banned already (the device "
            "is only kicked).", registry=r)
        self.ban_failures = Counter(
            "camstack_natsguard_ban_failures",
            "Bans or lifts not applied, by stage: write (the accounts file) or reload (a "
            "node did not confirm; retried next round).", ["stage"], registry=r)
        self.banned = Gauge("camstack_natsguard_banned", "Devices banned now.", registry=r)
        for reason in REASONS:
            self.kicks.labels(reason)
            self.kick_failures.labels(reason)
        self.bans.labels("over_budget")
        for lifted in ("recovered", "over_limit"):
            self.unbans.labels(lifted)
        for stage in ("write", "reload"):
            self.ban_failures.labels(stage)


@dataclass
class Collected:
    """One round's answers."""

    reports: list[NodeReport]
    listed: int
    """Connections listed (every account of CAMSTACK)."""
    servers: list[str] = field(default_factory=list)
    """Server ids of the nodes that answered."""


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time of a CONNZ answer (``start``, ``now``) as epoch seconds, or None."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_conn(server: str, raw: Any) -> Conn | None:
    """One CONNZ ``connections`` entry, or None when it cannot be read."""
    if not isinstance(raw, dict):
        return None
    cid, user, cli = raw.get("cid"), raw.get("authorized_user", ""), raw.get("mqtt_client")
    msgs, nbytes = raw.get("in_msgs", 0), raw.get("in_bytes", 0)
    if (not isinstance(cid, int) or not isinstance(user, str)
            or not isinstance(msgs, int) or not isinstance(nbytes, int)
            or (cli is not None and not isinstance(cli, str))):
        return None
    return Conn(server=server, cid=cid, user=user, client_id=cli, in_msgs=msgs,
                in_bytes=nbytes, started=parse_time(raw.get("start")))


class Guard:
    """Runs rounds until stopped.

    Args:
        settings: ``[broker.nats.guard]``.
        budget: The per-device allowance (``broker.device_*``).
        servers: NATS URLs of the nodes' client ports.
        nodes: How many nodes answer a PING (a round stops waiting once all have).
        user: System-account user.
        password: Its password.
        is_service: Whether an account name is a service's (never metered nor banned).
        metrics: Where to count (new when None).
        store: The accounts whose NATS file every node includes (bans are written there);
            None: no bans, kicks only.
    """

    def __init__(self, settings: NatsGuardSettings, budget: Budget, *, servers: list[str],
                 nodes: int, user: str, password: str, is_service: Callable[[str], bool],
                 metrics: GuardMetrics | None = None,
                 store: AccountStore | None = None) -> None:
        self.settings = settings
        self.servers = servers
        self.nodes = nodes
        self.user = user
        self.password = password
        self.metrics = metrics or GuardMetrics()
        self.meter = Meter(budget, is_service=is_service,
                           max_accounts=settings.max_accounts,
                           max_connections=settings.max_connections)
        self.store = store if settings.ban_max_devices > 0 else None
        self.bans = Bans(max_banned=settings.ban_max_devices if self.store else 0,
                         max_ban_s=settings.ban_max_s, is_service=is_service)
        self.servers_seen: dict[str, int] = {}
        """Server id -> the round it last answered (reloads go to every recent one)."""
        self.reload_pending: set[str] = set()
        """Nodes whose reload failed: asked again next round."""
        self.write_pending = False
        """The bans changed but the file was not written: tried again next round."""
        self.reload_all = False
        """Who is banned changed: every node reloads once the file is written."""
        self._rounds = 0
        if self.store is not None:
            # Bans of an earlier guard: taken back, and the file rewritten and every node
            # reloaded at the first round (it may have stopped between write and reload).
            self.bans.load(self.store.bans(), time.time())
            self.write_pending = self.reload_all = True
            self.metrics.banned.set(len(self.bans))

    def start_metrics(self) -> int:
        """Serve ``/metrics``; returns the port (``metrics_port`` 0 picks one)."""
        server, _thread = start_http_server(self.settings.metrics_port,
                                            addr=self.settings.metrics_host,
                                            registry=self.metrics.registry)
        return int(server.server_port)

    async def connect(self, stop: asyncio.Event) -> NatsClient | None:
        """Log in to the cluster, retrying every ``interval_s`` until it works or stop."""
        while not stop.is_set():
            try:
                nc = await nats.connect(
                    servers=self.servers, user=self.user, password=self.password,
                    name="camstack-guard", connect_timeout=2, max_reconnect_attempts=-1,
                    reconnect_time_wait=1, allow_reconnect=True)
            except (TimeoutError, NatsError, OSError) as exc:
                log.warning("guard_connect_failed", servers=self.servers, error=str(exc))
                await _sleep(stop, max(1.0, self.settings.interval_s))
                continue
            log.info("guard_connected", servers=self.servers, server=nc.connected_url and
                     nc.connected_url.netloc)
            self.metrics.connected.set(1)
            return nc
        return None

    def _options(self, offset: int) -> bytes:
        return json.dumps({"auth": True, "acc": ACCOUNT, "sort": "cid", "offset": offset,
                           "limit": self.settings.page_size}).encode()

    async def collect(self, nc: NatsClient) -> Collected:
        """Ask every node for its connections (all pages); one report per node."""
        timeout = self.settings.reply_timeout_s
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, pending_msgs_limit=MAX_REPLY_MSGS)
        pages: dict[str, dict[str, Any]] = {}
        try:
            await nc.publish(PING_CONNZ, self._options(0), reply=inbox)
            deadline = time.monotonic() + timeout
            while len(pages) < self.nodes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=left)
                except (TimeoutError, NatsError):
                    break
                server, data = self._reply(msg.data)
                if server is not None and data is not None:
                    pages[server] = data
        finally:
            await sub.unsubscribe()
        missing = max(0, self.nodes - len(pages))
        if missing:
            self.metrics.nodes_missing.inc(missing)
        self.metrics.nodes.set(len(pages))
        reports: list[NodeReport] = []
        listed = 0
        for server, first in pages.items():
            raws: list[Any] = list(first.get("connections") or [])
            total = first.get("total", len(raws))
            complete = True
            max_pages = self.settings.max_connections // self.settings.page_size + 1
            page = 1
            while isinstance(total, int) and len(raws) < total:
                if page >= max_pages:
                    complete = False  # past max_connections: the rest is not metered
                    break
                data = await self._page(nc, server, len(raws))
                if data is None:
                    complete = False
                    self.metrics.incomplete.inc()
                    break
                got = data.get("connections") or []
                total = data.get("total", total)
                if not got:
                    # Connections closed since the first page: the list ended earlier.
                    # Whoever moved to an earlier page meanwhile was not listed.
                    complete = False
                    break
                raws.extend(got)
                page += 1
            conns = []
            for raw in raws:
                conn = parse_conn(server, raw)
                if conn is None:
                    self.metrics.malformed.inc()
                    continue
                conns.append(conn)
            listed += len(conns)
            reports.append(NodeReport(server, tuple(conns), complete,
                                      now=parse_time(first.get("now"))))
        return Collected(reports, listed, list(pages))

    def _reply(self, payload: bytes) -> tuple[str | None, dict[str, Any] | None]:
        try:
            doc = json.loads(payload)
            server = doc["server"]["id"]
            data = doc["data"]
        except (ValueError, KeyError, TypeError):
            self.metrics.malformed.inc()
            return None, None
        if not isinstance(server, str) or not isinstance(data, dict):
            self.metrics.malformed.inc()
            return None, None
        return server, data

    async def _page(self, nc: NatsClient, server: str, offset: int) -> dict[str, Any] | None:
        try:
            msg = await nc.request(server_subject(server, "CONNZ"), self._options(offset),
                                   timeout=self.settings.reply_timeout_s)
        except (TimeoutError, NatsError) as exc:
            log.warning("guard_page_failed", node=server, offset=offset, error=str(exc))
            return None
        _, data = self._reply(msg.data)
        return data

    async def kick(self, nc: NatsClient, k: Kick) -> bool:
        """Close one connection; count and log it. True when the node confirmed."""
        # nats-server 2.15.1 answers {"code": 500, "description": "no such client or
        # leafnode id"} when the connection is already gone.
        error = await system_request(nc, server_subject(k.server, "KICK"),
                                     json.dumps({"cid": k.cid}).encode(),
                                     self.settings.reply_timeout_s)
        if error is not None:
            self.metrics.kick_failures.labels(k.reason).inc()
            log.warning("device_kick_failed", device=k.user, client_id=k.client_id,
                        node=k.server, cid=k.cid, reason=k.reason, error=error)
            return False
        self.metrics.kicks.labels(k.reason).inc()
        log.warning("device_kicked", device=k.user, client_id=k.client_id, node=k.server,
                    cid=k.cid, reason=k.reason, debt_msgs=round(k.debt_msgs),
                    debt_bytes=round(k.debt_bytes))
        return True

    async def reload(self, nc: NatsClient, server: str) -> bool:
        """Ask one node to reload its config (the accounts file). True when it confirmed."""
        error = await system_request(nc, server_subject(server, "RELOAD"), b"",
                                     max(self.settings.reply_timeout_s, 2.0))
        if error is not None:
            self.metrics.ban_failures.labels("reload").inc()
            log.warning("guard_reload_failed", node=server, error=error)
            return False
        return True

    async def apply_bans(self, nc: NatsClient, result: RoundResult) -> None:
        """Ban the devices kicked over budget and lift the bans whose end came.

        Every node must see it: the file is written, then every node reloaded. A failed
        write, or a node that did not confirm, is tried again next round.
        """
        if self.store is None:
            return
        now = time.time()
        decision = self.bans.decide(now, result.kicks)
        lifts = self.bans.lift(now)
        m = self.metrics
        if decision.refused:
            m.bans_refused.inc(decision.refused)
            log.warning("device_ban_refused", devices=decision.refused,
                        banned=len(self.bans), max_banned=self.settings.ban_max_devices)
        for b in decision.banned:
            m.bans.labels(b.reason).inc()
            log.warning("device_banned", device=b.user, reason=b.reason,
                        seconds=round(b.seconds, 1), debt_msgs=round(b.debt_msgs),
                        debt_bytes=round(b.debt_bytes))
        for b in decision.extended:
            log.warning("device_ban_extended", device=b.user, reason=b.reason,
                        seconds=round(b.seconds, 1))
        for lift in lifts:
            m.unbans.labels(lift.reason).inc()
            log.info("device_unbanned", device=lift.user, reason=lift.reason,
                     seconds=round(lift.seconds, 1))
        m.banned.set(len(self.bans))
        # Who is banned changed: every node must reload (an end moved later: the file only).
        self.reload_all |= bool(decision.banned or lifts)
        self.write_pending |= decision.changed or bool(lifts)
        if self.write_pending:
            try:
                await asyncio.to_thread(self.store.set_bans, self.bans.snapshot())
            except OSError as exc:
                m.ban_failures.labels("write").inc()
                log.error("guard_bans_write_failed", file=str(self.store.nats_bans),
                          error=str(exc))
                return
            self.write_pending = False
        if self.reload_all and self.servers_seen:
            self.reload_pending = set(self.servers_seen)
            self.reload_all = False
        pending = sorted(self.reload_pending)
        oks = await asyncio.gather(*(self.reload(nc, s) for s in pending))
        self.reload_pending = {s for s, ok in zip(pending, oks, strict=True) if not ok}
        if pending and not self.reload_pending:  # the bans now hold on every node
            log.info("guard_nodes_reloaded", nodes=len(pending), banned=len(self.bans))

    async def round(self, nc: NatsClient) -> RoundResult:
        """One round: collect, meter, kick, ban."""
        got = await self.collect(nc)
        self._rounds += 1
        for server in got.servers:
            self.servers_seen[server] = self._rounds
        # A node silent for 10 rounds is forgotten (a restarted node has a new id).
        for server in [s for s, r in self.servers_seen.items() if self._rounds - r >= 10]:
            del self.servers_seen[server]
            self.reload_pending.discard(server)
        result = self.meter.observe(time.monotonic(), got.reports)
        m = self.metrics
        m.rounds.inc()
        m.connections.set(got.listed)
        m.accounts.set(self.meter.accounts)
        m.device_msgs.inc(result.msgs)
        m.device_bytes.inc(result.bytes)
        m.untracked.inc(result.untracked)
        m.forgotten.inc(result.accounts_forgotten)
        # KICKs in parallel, KICK_BATCH at a time: a thousand flooders must not take a
        # thousand request timeouts in a row when a node is slow.
        for i in range(0, len(result.kicks), KICK_BATCH):
            await asyncio.gather(*(self.kick(nc, k) for k in result.kicks[i:i + KICK_BATCH]))
        # After the kicks: the kick closes the connection at once, the ban (a file write
        # and a reload of every node, tens of ms) keeps it from logging in again.
        await self.apply_bans(nc, result)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every ``interval_s`` until ``stop`` is set."""
        nc = await self.connect(stop)
        if nc is None:
            return
        try:
            while not stop.is_set():
                started = time.monotonic()
                if nc.is_connected:
                    try:
                        await self.round(nc)
                    except (TimeoutError, NatsError) as exc:
                        log.warning("guard_round_failed", error=str(exc))
                self.metrics.connected.set(1 if nc.is_connected else 0)
                await _sleep(stop, self.settings.interval_s - (time.monotonic() - started))
        finally:
            self.metrics.connected.set(0)
            await nc.close()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
