"""Partition leases on the NATS cluster: refuse a second owner of a partition.

Two MQTT sessions subscribed to one partition each get every frame of it and store it
twice (docs/scaling.md, "Rebalancing partitions", fact 2), and nothing in NATS's MQTT
layer prevents it. So before it subscribes, an ingestor with ``leases.enabled`` claims
one key per owned partition (``p<n>``) in a JetStream key-value bucket on the cluster:

* **claim**: ``create`` (expects no live value). A key held by another owner (another
  account name) ends the start with :class:`LeaseRefused` naming every such partition
  and its owner. A key held under this ingestor's own name is taken over (a restart
  after a crash, before its old lease expired).
* **refresh** every ``refresh_s``: ``update`` expecting the revision this process wrote
  last. The bucket's max age (``ttl_s``) removes a lease nobody refreshed: a crashed
  owner's partitions are free after ``ttl_s``.
* **release**: ``delete`` expecting our revision, on a clean stop and when a handoff
  releases partitions (ingestor/handoff.py). The acquiring side of a handoff does not
  claim the moving partitions at start (the releasing one still holds them); it asks
  again at every refresh and holds them once they are released.
* **lost**: a refresh finds another process's value (ours had expired, e.g. the
  cluster was out of reach for ``ttl_s``, and somebody claimed it; or a second process
  under this name took it over): ``on_lost`` is called (the service stops, exit 2)
  rather than store frames twice.

The connection is the ``[jobqueue]`` one (same servers, account and password); the
cluster grants the ingestor accounts this bucket only (broker/natscluster.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from config.settings import JobQueueSettings, LeaseSettings
from jobqueue.errors import JobQueueError
from jobqueue.loop import LoopThread
from jobqueue.queue import connect

log = structlog.get_logger("ingestor.leases")


class LeaseRefused(Exception):  # noqa: N818 - the name says what happened
    """Another live ingestor holds partitions this one was told to own."""


def key_of(partition: int) -> str:
    """The bucket key of a partition: ``p<n>``."""
    return f"p{partition}"


@dataclass(frozen=True, slots=True)
class Holder:
    """What a lease says: who holds the partition, since when."""

    owner: str
    instance: str
    host: str
    since_ms: int

    def to_json(self) -> bytes:
        """The key's value."""
        return json.dumps({"owner": self.owner, "instance": self.instance,
                           "host": self.host, "since_ms": self.since_ms}).encode()

    @classmethod
    def parse(cls, data: bytes | None) -> Holder:
        """A lease value; an unreadable one is an unknown owner (never ours)."""
        try:
            d = json.loads(data or b"")
            return cls(str(d["owner"]), str(d["instance"]), str(d.get("host", "?")),
                       int(d["since_ms"]))
        except (ValueError, KeyError, TypeError):
            return cls("<unreadable lease>", "", "?", 0)


def refusal(refused: dict[int, Holder]) -> str:
    """Why a claim was refused, one clause per holder.

    ``partitions 4, 5 are held by ingestor-a (host vm, since 18:21:42 UTC)``.
    """
    by: dict[Holder, list[int]] = {}
    for p, h in sorted(refused.items()):
        by.setdefault(h, []).append(p)
    return "; ".join(
        f"partition{'s' if len(ps) > 1 else ''} {', '.join(map(str, ps))} "
        f"{'are' if len(ps) > 1 else 'is'} held by {h.owner} (host {h.host}, since "
        f"{time.strftime('%H:%M:%S', time.gmtime(h.since_ms / 1000))} UTC)"
        for h, ps in by.items())


class PartitionLeases:
    """The leases of one ingestor, kept by a private asyncio loop in a daemon thread.

    Args:
        settings: ``[leases]``.
        connection: ``[jobqueue]`` (servers, account, password, TLS).
        owner: The ingestor's account name (a restart under it takes its leases over).
        partitions: Partitions to claim now.
        later: Partitions to claim once free (the acquiring side of a handoff).
        on_lost: Called (from the loop thread) with a partition and its new owner when a
            lease this process held turns out to be another's.
    """

    def __init__(self, settings: LeaseSettings, connection: JobQueueSettings, *, owner: str,
                 partitions: Iterable[int], later: Iterable[int] = (),
                 on_lost: Callable[[int, str], None] | None = None) -> None:
        self.settings = settings
        self.connection = connection
        self.me = Holder(owner, secrets.token_hex(8), socket.gethostname(),
                         int(time.time() * 1000))
        self.wanted = sorted(set(partitions) - set(later))
        self.later = sorted(set(later))
        self.on_lost = on_lost
        self.held: dict[int, int] = {}
        """Partition -> revision this process wrote last (touched in the loop only)."""
        self.waiting_logged: set[int] = set()
        self._loop = LoopThread("leases")
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None
        self._refresher: concurrent.futures.Future[None] | None = None

    def _call(self, coro: Any, timeout: float) -> Any:
        return self._loop.call(coro, timeout, " (leases)")

    def claim(self) -> None:
        """Connect, open the bucket, claim every partition; then keep them refreshed.

        Raises:
            LeaseRefused: Another owner holds some (all named); nothing is kept.
            JobQueueError: NATS did not answer.
        """
        timeout = self.connection.publish_timeout_s

        def retry(exc: BaseException, pause: float) -> None:
            # No answer (yet): a fresh cluster elects the bucket's leader first.
            log.warning("partition_lease_claim_retry", error=str(exc)[:200] or
                        type(exc).__name__, retry_s=pause)
            self._disconnect()

        try:
            self._loop.call_until(self._claim, 2 * timeout + 10, self.settings.claim_wait_s,
                                  what="partition leases (leases.claim_wait_s)",
                                  on_retry=retry)
        except BaseException:
            self.close()
            raise
        self._refresher = self._loop.submit(self._refresh_forever())

    def _disconnect(self) -> None:
        """Drop a failed attempt's connection (leases it took stay ours: retaken)."""
        self._loop.stop_connection(self._nc)
        self._nc, self._kv = None, None

    async def _claim(self) -> None:
        self._nc = await connect(self.connection, name=f"camstack-leases-{self.me.owner}")
        js = self._nc.jetstream(timeout=self.connection.publish_timeout_s)
        try:
            self._kv = await js.key_value(self.settings.bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=self.settings.bucket, history=1, ttl=self.settings.ttl_s,
                storage=StorageType.FILE, replicas=self.connection.replicas))
        refused: dict[int, Holder] = {}
        for p in self.wanted:
            other = await self._take(p)
            if other is not None:
                refused[p] = other
        if refused:
            for p in list(self.held):  # nothing half-claimed stays behind
                await self._delete(p)
            raise LeaseRefused(
                f"{refusal(refused)}: two owners would store their frames twice. Stop "
                "it or move them with a handoff (docs/scaling.md); a crashed owner's "
                f"lease expires after {self.settings.ttl_s:g}s (leases.ttl_s)")
        log.info("partition_leases_claimed", partitions=self.wanted,
                 later=self.later, bucket=self.settings.bucket, ttl_s=self.settings.ttl_s)

    async def _take(self, p: int, *, own: bool = True, again: bool = True) -> Holder | None:
        """Claim ``p``; None when held now, else the other holder.

        ``own``: a lease under this ingestor's name (another process, its restart) is
        taken over; only at start, where the old one is a crashed predecessor.
        """
        assert self._kv is not None
        try:
            self.held[p] = await self._kv.create(key_of(p), self.me.to_json())
            return None
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(key_of(p))
        except nats.js.errors.KeyNotFoundError:
            if again:  # expired or deleted meanwhile: try once more
                return await self._take(p, own=own, again=False)
            return Holder("<a lease changing hands>", "", "?", 0)
        holder = Holder.parse(entry.value)
        if holder.owner != self.me.owner or not own:
            return holder
        # Our own name: this ingestor restarted before its old lease expired.
        self.held[p] = await self._kv.update(key_of(p), self.me.to_json(),
                                             last=entry.revision)
        if holder.instance != self.me.instance:
            log.info("partition_lease_taken_over", partition=p, previous_host=holder.host,
                     previous_since_ms=holder.since_ms)
        return None

    async def _delete(self, p: int) -> None:
        assert self._kv is not None
        rev = self.held.pop(p, None)
        if rev is None:
            return
        try:
            await self._kv.delete(key_of(p), last=rev)
        except nats.js.errors.APIError as exc:
            # Not our revision any more (nats-py raises a plain 400 "wrong last
            # sequence" here): another's now, leave it.
            log.warning("partition_lease_not_ours", partition=p, error=str(exc)[:200])

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self._refresh()
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                # The cluster out of reach: try again; the lease lives ttl_s in all.
                log.warning("partition_lease_refresh_failed", error=str(exc)[:200],
                            held=len(self.held))

    async def _refresh(self) -> None:
        assert self._kv is not None
        for p, rev in sorted(self.held.items()):
            try:
                self.held[p] = await self._kv.update(key_of(p), self.me.to_json(), last=rev)
                continue
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            # Ours expired (out of reach for ttl_s) and is claimed again, or another
            # process holds it now: under another name, or under ours (a second
            # process with this config, or our restart while we still run): lost.
            del self.held[p]
            other = await self._take(p, own=False)
            if other is not None:
                log.error("partition_lease_lost", partition=p, owner=other.owner,
                          host=other.host)
                if self.on_lost is not None:
                    self.on_lost(p, other.owner)
        for p in self.later:
            if p in self.held:
                continue
            other = await self._take(p, own=False)
            if other is None:
                log.info("partition_lease_acquired", partition=p)
            elif p not in self.waiting_logged:
                self.waiting_logged.add(p)
                log.info("partition_lease_waiting", partition=p, owner=other.owner)

    def release(self, partitions: Iterable[int]) -> None:
        """Give partitions up (a handoff released them); does not wait."""
        parts = sorted(partitions)

        async def go() -> None:
            for p in parts:
                await self._delete(p)
            log.info("partition_leases_released", partitions=parts)

        self._loop.submit(go())

    def close(self) -> None:
        """Delete every lease held (a clean stop), disconnect, stop the loop."""
        if self._refresher is not None:
            self._loop.loop.call_soon_threadsafe(self._refresher.cancel)
        if self._nc is not None and self._kv is not None and self.held:
            held = sorted(self.held)

            async def drop() -> None:
                for p in held:
                    await self._delete(p)

            try:
                self._call(drop(), self.connection.publish_timeout_s + 5)
                log.info("partition_leases_released", partitions=held)
            except (JobQueueError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("partition_leases_not_released", error=str(exc)[:200],
                            expire_in_s=self.settings.ttl_s)
        self._loop.stop(self._nc)
        self._nc = None
