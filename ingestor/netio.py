"""A leaner receive path under paho: large reads, PUBLISH decoded here, PUBACKs batched.

Measured in bench/bench_ingest.py (figures in docs/performance.md). paho reads every
MQTT packet with three or four ``recv`` calls (type byte, each remaining-length byte,
the rest), each an ``SSL_read`` that drops and retakes the GIL (with the writer thread
busy every retake can wait), then builds a ``Properties`` object, an ``MQTTMessage``
and its log line per packet. :class:`FastReader` instead

* reads the socket in large pieces (one ``SSL_read`` returns a whole TLS record,
  usually one whole chunk) and serves paho's small reads from that buffer;
* decodes QoS 0/1 PUBLISH packets itself (fixed header, topic, packet id, the MQTT 5
  properties skipped; 3.1.1 has none) and hands ``(topic, payload, qos, mid)`` to a
  callback;
* leaves every other packet (CONNACK, SUBACK, PUBACK of our publishes, PINGRESP,
  DISCONNECT, QoS 2, a topic alias) to paho, which reads it from the same buffer.

:func:`queue_pubacks` hands paho one out-packet holding many PUBACKs, so a burst of
acknowledgements is one ``SSL_write`` instead of one each.

Both use paho-mqtt 2.2 internals (``Client._sock_recv``, ``_in_packet``,
``_packet_queue``, ``_last_bytes_received``; the version is pinned): :func:`supported`
says whether they exist, and the service falls back to paho's own path otherwise.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

_PUBACK = struct.Struct("!BBH")
_PUBACK_TYPE = 0x40
_PUBLISH = 3

OnPublish = Callable[[str, bytes, int, int, bool], None]
"""Called with (topic, payload, qos, packet id, retain flag) for every PUBLISH decoded here."""


def supported(client: mqtt.Client) -> bool:
    """Whether this paho version has the internals used here."""
    return (callable(getattr(client, "_sock_recv", None))
            and callable(getattr(client, "_packet_queue", None))
            and isinstance(getattr(client, "_in_packet", None), dict)
            and hasattr(client, "_last_bytes_received"))


class FastReader:
    """The receive path of one paho client (installed over ``Client._sock_recv``).

    Bytes in the buffer are invisible to ``select``: call :meth:`pump` again while
    :attr:`buffered` is non-zero.

    Args:
        client: The paho client.
        size: Largest single socket read.
    """

    def __init__(self, client: mqtt.Client, size: int = 256 * 1024) -> None:
        self._client = client
        self._size = size
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._need_data = False
        # MQTT 3.1.1 PUBLISH packets carry no properties (the NATS engine speaks 3.1.1).
        self._v5 = getattr(client, "_protocol", mqtt.MQTTv5) == mqtt.MQTTv5
        client._sock_recv = self.recv  # type: ignore[method-assign]

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not consumed yet."""
        return len(self._buf) - self._pos

    @property
    def ready(self) -> bool:
        """Whether :meth:`pump` has work without waiting for the socket."""
        return len(self._buf) > self._pos and not self._need_data

    def reset(self) -> None:
        """Forget buffered bytes (a new connection starts)."""
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._need_data = False

    # ----------------------------------------------------------------- socket
    def _fill(self) -> bool:
        """Append one socket read to the buffer; False when nothing more is there now."""
        if self._eof:
            return False
        sock: Any = self._client.socket()
        if sock is None:
            return False
        try:
            data: bytes = sock.recv(self._size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            self._eof = True  # paho's next read sees the end and reports the loss
            return False
        if not data:
            self._eof = True
            return False
        rest = self._buf[self._pos:] if self._pos < len(self._buf) else b""
        self._buf = rest + data if rest else data
        self._pos = 0
        self._need_data = False
        return True

    def recv(self, bufsize: int) -> bytes:
        """Stand-in for paho's ``_sock_recv``: at most ``bufsize`` bytes, from the buffer first.

        Raises:
            BlockingIOError: Nothing buffered and nothing to read now (as paho expects).
        """
        avail = len(self._buf) - self._pos
        if avail <= 0:
            if self._eof:
                return b""
            if not self._fill():
                if self._eof:
                    return b""
                raise BlockingIOError
            avail = len(self._buf)
        pos = self._pos
        if bufsize >= avail:
            out = self._buf[pos:] if pos else self._buf
            self._buf = b""
            self._pos = 0
            return out
        self._pos = pos + bufsize
        return self._buf[pos:pos + bufsize]

    # ----------------------------------------------------------------- packets
    def pump(self, on_publish: OnPublish, max_packets: int = 256,
             stop: Callable[[], bool] | None = None) -> tuple[int, int]:
        """Read and dispatch packets until the socket has nothing more for now.

        Args:
            on_publish: Gets every QoS 0/1 PUBLISH with a topic name.
            max_packets: Return after this many packets (let the caller send acks).
            stop: Checked before each packet; True stops reading (back-pressure).

        Returns:
            (publishes handed to ``on_publish``, paho's return code: 0 = fine).
        """
        client = self._client
        in_packet: Any = client._in_packet
        handled = 0
        for _ in range(max_packets):
            if stop is not None and stop():
                break
            if in_packet["command"] != 0:
                # paho is inside a packet (started before a refill): let it finish.
                rc = int(client.loop_read())
                if rc:
                    return handled, rc
                if in_packet["command"] != 0:
                    break  # still incomplete: wait for the socket
                continue
            buf, pos = self._buf, self._pos
            end = len(buf)
            # Fixed header: type/flags byte, remaining length (1-4 bytes, 7 bits each).
            length = 0
            shift = 0
            i = pos + 1
            complete = False
            while i < end and i - pos <= 4:
                b = buf[i]
                length |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    complete = True
                    break
                shift += 7
            if not complete or i + length > end:
                if i - pos > 4 and not complete:
                    rc = int(client.loop_read())  # malformed: paho reports it
                    if rc:
                        return handled, rc
                    continue
                if self._fill():
                    continue
                if self._eof:
                    # The stream ended (maybe inside a packet): paho reads what is left,
                    # then the end, and reports the connection lost.
                    return handled, int(client.loop_read())
                self._need_data = True  # a partial packet waits for the socket
                break
            first = buf[pos]
            qos = (first >> 1) & 3
            if first >> 4 != _PUBLISH or qos == 2 or length < 3:
                rc = int(client.loop_read())  # exactly this packet, from the buffer
                if rc:
                    return handled, rc
                continue
            stop_at = i + length
            tlen = (buf[i] << 8) | buf[i + 1]
            j = i + 2 + tlen
            if tlen == 0 or j + (2 if qos else 0) >= stop_at + 1:
                rc = int(client.loop_read())  # topic alias or malformed: paho's call
                if rc:
                    return handled, rc
                continue
            topic = buf[i + 2:j].decode("utf-8", "replace")
            mid = 0
            if qos:
                mid = (buf[j] << 8) | buf[j + 1]
                j += 2
            # MQTT 5 properties: a length (variable byte integer), then skipped.
            plen = 0
            shift = 0
            while self._v5 and j < stop_at:
                b = buf[j]
                plen |= (b & 0x7F) << shift
                j += 1
                if not b & 0x80:
                    break
                shift += 7
            j += plen
            if j > stop_at:
                rc = int(client.loop_read())  # malformed: paho's call
                if rc:
                    return handled, rc
                continue
            payload = buf[j:stop_at]
            self._pos = stop_at
            handled += 1
            on_publish(topic, payload, qos, mid, bool(first & 1))
        if handled:
            # paho's keepalive looks at when bytes last came in.
            client._last_bytes_received = time.monotonic()
        return handled, 0


def queue_pubacks(client: mqtt.Client, mids: Iterable[int]) -> int:
    """Queue PUBACKs for ``mids`` (in order) as one out-packet; paho writes it.

    Args:
        client: The paho client.
        mids: Packet ids, each acknowledged once per occurrence.

    Returns:
        How many PUBACKs were queued.
    """
    pack = _PUBACK.pack
    data = b"".join([pack(_PUBACK_TYPE, 2, mid) for mid in mids])
    if not data:
        return 0
    client._packet_queue(_PUBACK_TYPE, data, 0, 1)
    return len(data) // 4
