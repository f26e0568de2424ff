"""Fan-out of live changes to the browsers' server-sent-event streams (bounded)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Client:
    """One open event stream: a bounded queue; overflow means "reload"."""

    def __init__(self, maxsize: int) -> None:
        """A queue of at most ``maxsize`` changes."""
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self.overflow = False


class Broadcaster:
    """Every connected browser gets every change; a slow one is told to resync."""

    def __init__(self, max_clients: int, queue_size: int = 2000) -> None:
        """At most ``max_clients`` streams at once."""
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.clients: set[Client] = set()

    def connect(self) -> Client | None:
        """A new stream, or None when there are too many."""
        if len(self.clients) >= self.max_clients:
            return None
        c = Client(self.queue_size)
        self.clients.add(c)
        return c

    def disconnect(self, client: Client) -> None:
        """Forget a stream."""
        self.clients.discard(client)

    def publish(self, change: dict[str, Any]) -> None:
        """Queue ``change`` for every stream (call on the event loop)."""
        text = json.dumps(change, separators=(",", ":"))
        for c in list(self.clients):
            if c.overflow:
                continue
            try:
                c.queue.put_nowait(text)
            except asyncio.QueueFull:
                c.overflow = True
                while not c.queue.empty():
                    c.queue.get_nowait()
                c.queue.put_nowait("")  # the stream sends "resync" and ends
