"""Per-device budgets of the NATS engine's guard: pure logic, no I/O, no clock.

Every round the guard hands :meth:`Meter.observe` what each node listed in its CONNZ
(cumulative ``in_msgs``/``in_bytes`` per connection) and the time; the meter turns the
counters into deltas per (server, cid), charges them to two token buckets per device
account (messages and bytes, each a sustained rate with a burst: the ``device_*``
budgets of ``BrokerSettings``, the same as the Mosquitto guard plugin's) and says which
connections to close:

* ``over_budget``: the account's bucket went below zero. Unlike the Mosquitto plugin,
  which refuses the message that does not fit, the guard sees traffic after it passed,
  so the bucket is charged in full and may go into **debt** (bounded by ``max_debt_s``
  seconds of rate): a kicked flooder that reconnects is kicked again at the first round
  in which it publishes anything while still in debt.
* ``client_id_taken``: a device account whose MQTT client id is not its own
  (:func:`is_own_client_id`). NATS has no ``use_username_as_clientid``; a device
  connecting with another device's client id closes the victim's connection (and with
  a clean session drops its session). Closing the taker bounds that to one round.

Service accounts are never metered nor checked (their client ids are derived from their
passwords, ``mqttclient.session_client_id``).

Buckets outlive connections (a reconnect keeps the account's bucket) and are bounded:
past ``max_accounts`` the least recently charged accounts whose buckets are full again
are forgotten first (which loses nothing), then the least recently charged at all
(counted: such an account starts again with a full budget).

Counter deltas are robust to what a node may report: a connection first seen on a node
the meter already knew is charged everything it sent (it connected since the last
round); every connection of a node seen for the first time (the guard just started, a
node restarted with a new server id), and a connection that started before the node's
previous answer but was not in it (it fell between two pages), is only taken as a
baseline, so a long-lived device is never charged its whole history; a counter that
went down (a cid reused) is taken as a new connection.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

Reason = Literal["over_budget", "client_id_taken"]
REASONS: tuple[Reason, ...] = ("over_budget", "client_id_taken")
_SESSION_TAG = re.compile(r"-[0-9a-f]{16}")


def is_own_client_id(user: str, client_id: str) -> bool:
    """Whether a device's MQTT client id is its own.

    The firmware sends its device id; camstack's 3.1.1 clients (the simulator, the test
    fleet) send ``<id>-<16 hex of HMAC(password, id)>`` (``mqttclient.session_client_id``),
    which no other account can reproduce. Any other id is someone else's or nobody's.
    One gap: a device named ``<another device's id>-<16 hex>`` could be taken over by
    that other device (ids are chosen by the operator: do not name devices so).

    Args:
        user: The account (``authorized_user``).
        client_id: The MQTT client id (``mqtt_client``).

    Returns:
        True for the id itself or the id with a session tag.
    """
    return client_id == user or (client_id.startswith(user)
                                 and _SESSION_TAG.fullmatch(client_id[len(user):]) is not None)


@dataclass(frozen=True)
class Budget:
    """One device account's allowance (``BrokerSettings.device_*``)."""

    msgs_per_s: float
    burst_msgs: float
    bytes_per_s: float
    burst_bytes: float
    max_debt_s: float = 60.0
    """A bucket goes at most this many seconds of its rate below zero: the longest a
    device that flooded is kicked again for publishing anything."""


@dataclass(frozen=True)
class Conn:
    """One client connection as a node lists it (``$SYS.REQ.SERVER.PING.CONNZ``)."""

    server: str
    """The node's server id (``server.id`` of the reply): new at every node restart."""
    cid: int
    user: str
    """``authorized_user``."""
    client_id: str | None
    """``mqtt_client``; None for a NATS-protocol connection."""
    in_msgs: int
    in_bytes: int
    started: float | None = None
    """``start``, seconds since the epoch on the node's clock (None: not given)."""


@dataclass(frozen=True)
class NodeReport:
    """Everything one node answered in one round."""

    server: str
    conns: tuple[Conn, ...]
    complete: bool = True
    """Every page was read: a known cid missing from it is gone."""
    now: float | None = None
    """The node's ``now`` in its answer (seconds since the epoch, its clock)."""


@dataclass(frozen=True)
class Kick:
    """A connection to close, and why."""

    server: str
    cid: int
    user: str
    client_id: str | None
    reason: Reason
    debt_msgs: float = 0.0
    """Messages below zero in the account's bucket after this round (over_budget)."""
    debt_bytes: float = 0.0
    owed_s: float = 0.0
    """Seconds of its rate the account needs to be back at zero, counted before the debt
    is floored at ``max_debt_s`` (over_budget): how long a ban must last for the account
    to have averaged its budget (natsguard/bans.py)."""


@dataclass
class RoundResult:
    """What one round found."""

    kicks: list[Kick] = field(default_factory=list)
    msgs: int = 0
    """Messages charged to device accounts this round."""
    bytes: int = 0
    counter_resets: int = 0
    untracked: int = 0
    """Connections not metered because ``max_connections`` were already tracked."""
    accounts_forgotten: int = 0
    """Accounts forgotten with a bucket that was not full (they start again full)."""


@dataclass
class _Bucket:
    msgs: float
    bytes: float
    at: float

    def refill(self, now: float, b: Budget) -> None:
        dt = max(0.0, now - self.at)
        self.msgs = min(b.burst_msgs, self.msgs + b.msgs_per_s * dt)
        self.bytes = min(b.burst_bytes, self.bytes + b.bytes_per_s * dt)
        self.at = max(self.at, now)

    def full(self, b: Budget) -> bool:
        return self.msgs >= b.burst_msgs and self.bytes >= b.burst_bytes


@dataclass
class _Node:
    conns: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_round: int = 0
    last_at: float = 0.0
    """When it last answered: its connections' deltas were sent after that."""
    last_node_now: float | None = None
    """The node's own clock in its last answer."""


def _owed(tokens: float, rate: float) -> float:
    """Seconds of ``rate`` until ``tokens`` (below zero: a debt) are back at zero."""
    if tokens >= 0:
        return 0.0
    return float("inf") if rate <= 0 else -tokens / rate


class Meter:
    """Token buckets per device account, fed with CONNZ counters.

    Args:
        budget: The per-device allowance.
        is_service: Whether an account name is a service's (never metered).
        max_accounts: Accounts remembered at most.
        max_connections: Connections whose counters are tracked at most (over it, new
            ones are not metered, counted in ``RoundResult.untracked``).
        forget_node_rounds: A node silent for this many rounds is forgotten (a
            restarted node has a new server id; its old entry would stay forever).
        login_grace_s: A connection first listed that started more than this before the
            node's previous answer was missed then (a baseline); a younger one may have
            been logging in (charged everything it sent).
    """

    def __init__(self, budget: Budget, *, is_service: Callable[[str], bool],
                 max_accounts: int = 100_000, max_connections: int = 200_000,
                 forget_node_rounds: int = 10, login_grace_s: float = 10.0) -> None:
        if max_accounts < 1 or max_connections < 1 or forget_node_rounds < 1:
            raise ValueError("max_accounts, max_connections, forget_node_rounds must be >= 1")
        self.budget = budget
        self.is_service = is_service
        self.max_accounts = max_accounts
        self.max_connections = max_connections
        self.forget_node_rounds = forget_node_rounds
        self.login_grace_s = login_grace_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._nodes: dict[str, _Node] = {}
        self._round = 0

    @property
    def accounts(self) -> int:
        """Accounts remembered."""
        return len(self._buckets)

    @property
    def tracked_connections(self) -> int:
        """Connections whose counters are kept."""
        return sum(len(n.conns) for n in self._nodes.values())

    def tokens(self, user: str, now: float) -> tuple[float, float] | None:
        """An account's (messages, bytes) left at ``now``, or None when not remembered."""
        b = self._buckets.get(user)
        if b is None:
            return None
        probe = _Bucket(b.msgs, b.bytes, b.at)
        probe.refill(now, self.budget)
        return probe.msgs, probe.bytes

    def observe(self, now: float, reports: Iterable[NodeReport]) -> RoundResult:
        """Charge one round of node reports; say which connections to close.

        Args:
            now: Seconds on a monotonic clock.
            reports: One per node that answered (a node that did not is left as is).

        Returns:
            The kicks (one per connection at most) and the round's figures.
        """
        self._round += 1
        out = RoundResult()
        charges: dict[str, list[int]] = {}
        windows: dict[str, float] = {}
        active: dict[str, list[Conn]] = {}
        tracked = self.tracked_connections
        for rep in reports:
            node = self._nodes.get(rep.server)
            baseline = node is None
            if node is None:
                node = self._nodes[rep.server] = _Node()
            node.last_round = self._round
            since, node.last_at = node.last_at, now
            seen_until, node.last_node_now = node.last_node_now, rep.now
            seen: dict[int, tuple[int, int]] = {}
            listed: set[int] = set()
            if rep.complete:
                # Every connection of the node is in the list: the map is rebuilt, and
                # the ones that left free their slots before new ones take any.
                tracked -= len(node.conns)
            # Known connections first, so a full map never refuses one it already had.
            for c in sorted(rep.conns, key=lambda c: c.cid not in node.conns):
                # A connection listed twice (it moved between two pages) counts once.
                if not c.user or self.is_service(c.user) or c.cid in listed:
                    continue
                listed.add(c.cid)
                if c.client_id is not None and not is_own_client_id(c.user, c.client_id):
                    out.kicks.append(Kick(c.server, c.cid, c.user, c.client_id,
                                          "client_id_taken"))
                    continue
                prev = node.conns.get(c.cid)
                if prev is None:
                    if tracked >= self.max_connections:
                        out.untracked += 1
                        continue
                    # A connection that started well before the node's last answer was
                    # there then but not listed (pages shift while connections come and
                    # go): its counters are a baseline, not a whole history to charge.
                    # "Well": a connection is listed only once logged in (TLS, bcrypt),
                    # so one that started just before the answer may simply be new.
                    missed = (c.started is not None and seen_until is not None
                              and c.started < seen_until - self.login_grace_s)
                    dm, db = (0, 0) if baseline or missed else (c.in_msgs, c.in_bytes)
                elif c.in_msgs < prev[0] or c.in_bytes < prev[1]:
                    out.counter_resets += 1
                    dm, db = c.in_msgs, c.in_bytes
                else:
                    dm, db = c.in_msgs - prev[0], c.in_bytes - prev[1]
                if rep.complete or prev is None:
                    tracked += 1
                seen[c.cid] = (c.in_msgs, c.in_bytes)
                if dm or db:
                    tot = charges.setdefault(c.user, [0, 0])
                    tot[0] += dm
                    tot[1] += db
                    active.setdefault(c.user, []).append(c)
                    windows[c.user] = min(windows.get(c.user, since), since)
            if rep.complete:
                node.conns = seen
            else:
                node.conns.update(seen)
        for server in [s for s, n in self._nodes.items()
                       if self._round - n.last_round >= self.forget_node_rounds]:
            del self._nodes[server]
        for user, (dm, db) in charges.items():
            out.msgs += dm
            out.bytes += db
            kick = self._charge(user, windows[user], now, dm, db)
            if kick is not None:
                out.kicks += [Kick(c.server, c.cid, user, c.client_id, "over_budget",
                                   kick[0], kick[1], kick[2]) for c in active[user]]
        out.accounts_forgotten = self._evict(now)
        return out

    def _charge(self, user: str, since: float, now: float, msgs: int,
                nbytes: int) -> tuple[float, float, float] | None:
        """Charge an account what it sent between ``since`` and ``now``.

        Returns:
            Its debt (messages, bytes, and the seconds of rate it owes before the floor)
            when the bucket is below zero, else None.
        """
        b = self.budget
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(b.burst_msgs, b.burst_bytes, since)
        self._buckets.move_to_end(user)
        # Up to the start of the window the bucket fills as always (capped at the burst:
        # an idle hour earns no more than the burst). The window's traffic was sent
        # somewhere in it: the tokens that arrived during the window count before the cap
        # (as if it was sent while they arrived, the most lenient order), so only a device
        # that certainly went over its budget is closed. Then floored at the debt.
        bucket.refill(min(since, now), b)
        dt = max(0.0, now - bucket.at)
        bucket.at = max(bucket.at, now)
        bucket.msgs = min(b.burst_msgs, bucket.msgs + b.msgs_per_s * dt - msgs)
        bucket.bytes = min(b.burst_bytes, bucket.bytes + b.bytes_per_s * dt - nbytes)
        # What it owes before the floor: a flood far past max_debt_s is banned that long
        # (the floor only bounds how long publishing anything gets it kicked again).
        owed_s = max(_owed(bucket.msgs, b.msgs_per_s), _owed(bucket.bytes, b.bytes_per_s))
        bucket.msgs = max(bucket.msgs, -b.msgs_per_s * b.max_debt_s)
        bucket.bytes = max(bucket.bytes, -b.bytes_per_s * b.max_debt_s)
        if bucket.msgs < 0 or bucket.bytes < 0:
            return max(0.0, -bucket.msgs), max(0.0, -bucket.bytes), owed_s
        return None

    def _evict(self, now: float) -> int:
        """Forget accounts past ``max_accounts``, full buckets first.

        Returns:
            How many forgotten accounts were not full (they start again full).
        """
        excess = len(self._buckets) - self.max_accounts
        if excess <= 0:
            return 0
        for user in list(self._buckets):
            if excess == 0:
                return 0
            bucket = self._buckets[user]
            bucket.refill(now, self.budget)
            if bucket.full(self.budget):
                del self._buckets[user]
                excess -= 1
        lost = 0
        while excess > 0:
            self._buckets.popitem(last=False)
            excess -= 1
            lost += 1
        return lost
