"""Which QoS 1 PUBACKs may be sent now. Pure: no paho, no I/O.

A PUBACK names a packet id (``mid``) only, and Mosquitto 2.0 reuses a packet id that
is still unacknowledged once 65535 more messages went out to us (measured, see
docs/ingestor.md); a PUBACK for a reused id then removes the *oldest* message holding
it. So the ledger keeps, per packet id, the holders in arrival order and lets a PUBACK
go only when the oldest holder is released: releasing a newer holder first waits.

Tokens belong to one connection. After a reconnect the broker sends every unacked
message again (with DUP set), so tokens of an older connection are void: acking them
on the new connection could remove a message we never saw.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AckToken:
    """One received QoS 1 message waiting for its PUBACK."""

    generation: int
    serial: int
    mid: int


@dataclass(slots=True)
class _Slot:
    holders: deque[int] = field(default_factory=deque)
    released: set[int] = field(default_factory=set)


class AckLedger:
    """Per-packet-id FIFO of held messages of the current connection."""

    def __init__(self) -> None:
        self.generation = 0
        self._serial = 0
        self._slots: dict[int, _Slot] = {}
        self._held = 0

    @property
    def held(self) -> int:
        """Messages of this connection not yet acknowledged."""
        return self._held

    def new_connection(self) -> int:
        """Forget every token: a new connection starts (the broker will resend).

        Returns:
            How many held tokens were voided.
        """
        voided = self._held
        self.generation += 1
        self._slots.clear()
        self._held = 0
        return voided

    def hold(self, mid: int) -> AckToken:
        """Record a received message.

        Args:
            mid: Its packet id.

        Returns:
            The token to release when the message may be acknowledged.
        """
        self._serial += 1
        slot = self._slots.get(mid)
        if slot is None:
            slot = self._slots[mid] = _Slot()
        slot.holders.append(self._serial)
        self._held += 1
        return AckToken(self.generation, self._serial, mid)

    def is_current(self, token: AckToken) -> bool:
        """Whether ``token`` belongs to the current connection."""
        return token.generation == self.generation

    def release(self, token: AckToken) -> int:
        """The message may be acknowledged.

        Args:
            token: From :meth:`hold`. Tokens of older connections are ignored.

        Returns:
            How many PUBACKs for ``token.mid`` to send now (0 while an older holder of the
            same packet id is still held).
        """
        if token.generation != self.generation:
            return 0
        slot = self._slots.get(token.mid)
        if slot is None or token.serial in slot.released:
            return 0
        if token.serial not in slot.holders:
            return 0
        slot.released.add(token.serial)
        n = 0
        while slot.holders and slot.holders[0] in slot.released:
            slot.released.discard(slot.holders.popleft())
            n += 1
        self._held -= n
        if not slot.holders:
            del self._slots[token.mid]
        return n
