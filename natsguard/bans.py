"""Temporary bans of the NATS engine's guard: pure logic, no I/O, no clock.

The guard closes an over-budget connection only after the fact (natsguard/meter.py): a
flooder that reconnects at once gets one more round of flooding per reconnect. A ban
removes the device from the accounts file every node includes (broker/accounts.py
``set_bans``, then a reload of every node), so its logins are refused until its bucket
is back at zero: a reconnect loop then averages about its budget.

* A device kicked ``over_budget`` is banned for the seconds of its rate it owes
  (``Kick.owed_s``, counted before the meter's debt floor), at most ``max_ban_s``. A
  ban already in place is only ever lengthened.
* At most ``max_banned`` devices are banned at once; a ban past that is refused and
  counted (the device is still kicked every round it floods).
* A service account is never banned, whatever the kick says.
* A ban ends at the first round at or after its end (``lift``), including bans read
  back from the file after a guard restart whose end passed meanwhile.

Times are seconds since the epoch (bans are persisted and outlive the guard process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from natsguard.meter import Kick


@dataclass(frozen=True)
class Ban:
    """One device banned, until when and why."""

    user: str
    until: float
    seconds: float
    reason: str
    debt_msgs: float = 0.0
    debt_bytes: float = 0.0


@dataclass(frozen=True)
class Lift:
    """One ban ended."""

    user: str
    reason: str
    """``recovered`` (its end came), ``over_limit`` (more bans read back than allowed)."""
    seconds: float
    """How long it was banned (from its start when known, else since it was read back)."""


@dataclass
class BanDecision:
    """What one round changes."""

    banned: list[Ban] = field(default_factory=list)
    extended: list[Ban] = field(default_factory=list)
    refused: int = 0
    """Bans not made because ``max_banned`` devices were banned already."""

    @property
    def changed(self) -> bool:
        """Whether the accounts file must be rewritten (a new ban or a later end)."""
        return bool(self.banned or self.extended)


class Bans:
    """Devices banned now, bounded.

    Args:
        max_banned: Devices banned at once at most (0: never ban).
        max_ban_s: The longest a single ban lasts.
        is_service: Whether an account name is a service's (never banned).
    """

    def __init__(self, *, max_banned: int, max_ban_s: float,
                 is_service: Callable[[str], bool]) -> None:
        if max_banned < 0 or max_ban_s <= 0:
            raise ValueError("max_banned must be >= 0 and max_ban_s > 0")
        self.max_banned = max_banned
        self.max_ban_s = max_ban_s
        self.is_service = is_service
        self._until: dict[str, float] = {}
        self._since: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, user: object) -> bool:
        return user in self._until

    def snapshot(self) -> dict[str, float]:
        """Every ban, device -> end (what is persisted)."""
        return dict(self._until)

    def load(self, saved: Mapping[str, float], now: float) -> None:
        """Take back the bans persisted by an earlier guard (services dropped).

        Ends past ``now + max_ban_s`` are cut to it (the setting may have been lowered);
        bans past ``max_banned`` are lifted at the next :meth:`lift`.
        """
        for user, until in saved.items():
            if self.is_service(user):
                continue
            self._until[user] = min(float(until), now + self.max_ban_s)
            self._since[user] = now

    def decide(self, now: float, kicks: Iterable[Kick]) -> BanDecision:
        """Ban the devices kicked over budget this round.

        Args:
            now: Seconds since the epoch.
            kicks: The round's kicks (several per device when it had several connections).

        Returns:
            New bans, lengthened ones, and how many were refused (the limit).
        """
        out = BanDecision()
        owed: dict[str, Kick] = {}
        for k in kicks:
            if k.reason != "over_budget" or self.is_service(k.user):
                continue
            if k.user not in owed or k.owed_s > owed[k.user].owed_s:
                owed[k.user] = k
        if self.max_banned == 0:
            return out
        for user, k in sorted(owed.items()):
            seconds = min(self.max_ban_s, max(0.0, k.owed_s))
            if seconds <= 0:
                continue
            ban = Ban(user, now + seconds, seconds, k.reason, k.debt_msgs, k.debt_bytes)
            old = self._until.get(user)
            if old is not None:
                if ban.until > old:
                    self._until[user] = ban.until
                    out.extended.append(ban)
                continue
            if len(self._until) >= self.max_banned:
                out.refused += 1
                continue
            self._until[user] = ban.until
            self._since[user] = now
            out.banned.append(ban)
        return out

    def lift(self, now: float) -> list[Lift]:
        """End the bans whose end has come, and any past ``max_banned`` (soonest first)."""
        out = [Lift(u, "recovered", now - self._since.get(u, now))
               for u, until in self._until.items() if until <= now]
        for lift in out:
            del self._until[lift.user]
        excess = len(self._until) - self.max_banned
        if excess > 0:
            for user in sorted(self._until, key=lambda u: (self._until[u], u))[:excess]:
                out.append(Lift(user, "over_limit", now - self._since.get(user, now)))
                del self._until[user]
        for lift in out:
            self._since.pop(lift.user, None)
        return out
