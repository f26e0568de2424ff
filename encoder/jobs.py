"""One batch from sealed frames to a published video, in crash-safe order.

The order of steps, each durable before the next (docs/encoder.md):

1. lock the batch folder; a batch already gone means a previous run finished it:
   re-publish its video event if the video exists;
2. if the batch's video already exists (a crash after the rename): skip to 7;
3. count the attempt (a batch that kills the process is quarantined after
   ``max_attempts`` tries instead of crash-looping the encoder);
4. encode to a hidden temporary name beside the final one, fsync;
5. reopen with PyAV and check codec, frame count and size;
6. write the thumbnail and the ``.json`` sidecar (each temp + fsync + rename), then
   rename the MP4 into place and fsync the folder: the video now exists;
7. note the video as unannounced, purge the batch (one rename out of ``batches/``,
   fsync), publish ``cam/<id>/video`` retained QoS 1 and wait for the PUBACK, clear
   the note; the caller then acks the ready event.

No MQTT here: publishing is a callable the service passes in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog import CatalogError, InvalidValueError, SealedBatch, SqlCatalog, VideoRow
from catalog.signing import sha256_file, sign_video
from config.settings import EncoderSettings
from contract.events import BadManifestError, Manifest, VideoEvent
from encoder.batch import (
    FoundVideo,
    Storage,
    UnsafePathError,
    atomic_write,
    fsync_dir,
    fsync_file,
    make_dirs,
)
from encoder.cloud import BatchRef, CloudJob, encode_from_store
from encoder.metrics import EncoderMetrics
from encoder.muxer import EncodeCancelledError, EncodeOptions, encode_video, probe_video
from objstore.batchpack import batch_source_sha256

log = structlog.get_logger("encoder.jobs")

PublishFn = Callable[[str, dict[str, Any]], bool]
"""``publish(device, event)``: True once the broker acknowledged, False when stopping."""


class Outcome(StrEnum):
    """How handling a batch ended; everything but RETRY and STOPPED is acked."""

    ENCODED = "encoded"
    ALREADY_DONE = "already_done"
    QUARANTINED = "quarantined"
    MISSING = "missing"
    UNSEALED = "unsealed"
    BUSY = "busy"
    RETRY = "retry"
    STOPPED = "stopped"
    FAILED = "failed"


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the file system running out of space.

    Args:
        exc: An exception, possibly wrapping an ``OSError`` (PyAV's errors are OSErrors).

    Returns:
        True for ENOSPC and EDQUOT.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


class VerifyError(Exception):
    """The written MP4 does not hold what was encoded."""


@dataclass(frozen=True)
class Job:
    """A batch to handle: from a ready event (with its times) or from a disk scan."""

    device: str
    batch: str
    source: Literal["ready", "scan", "jetstream"]
    first_ms: int | None = None
    last_ms: int | None = None


class BatchProcessor:
    """Turns batches into videos.

    Safe to call from several threads at once: a batch folder is locked while handled,
    and the store path works in a scratch folder of its own per run.
    """

    def __init__(self, storage: Storage, settings: EncoderSettings, metrics: EncoderMetrics,
                 publish: PublishFn, *, account: str = "encoder",
                 cancel: threading.Event | None = None, catalog: SqlCatalog | None = None,
                 signing_key: Ed25519PrivateKey | None = None,
                 cloud: CloudJob | None = None,
                 options: EncodeOptions | None = None) -> None:
        self.storage = storage
        self.settings = settings
        self.metrics = metrics
        self.publish = publish
        self.account = account
        self.cancel = cancel
        self.catalog = catalog
        self.signing_key = signing_key
        self.cloud = cloud
        """Set with ``store.backend = "s3"``: batches are packs in the store."""
        self.options = options or EncodeOptions.from_settings(settings.encode)

    # --- entry point -----------------------------------------------------------------

    def handle(self, job: Job) -> Outcome:
        """Handle one batch; never raises for a problem of the batch itself.

        Args:
            job: The batch.

        Returns:
            The outcome.
        """
        try:
            outcome = self._handle_cloud(job) if self.cloud is not None else self._handle(job)
        except OSError as exc:
            if not disk_full(exc):
                raise
            outcome = self._disk_full(job, "write", exc)
        except CatalogError as exc:
            # The database is down or busy: nothing was released (the batch is purged
            # only after its row commits); try again after the backoff.
            log.error("catalog_unavailable", device=job.device, batch=job.batch,
                      error=str(exc)[:300], retry_in_s=self.settings.work.retry_backoff_s)
            self.metrics.failures.labels("catalog").inc()
            outcome = Outcome.RETRY
        self.metrics.batches.labels(outcome.value).inc()
        return outcome

    def _handle_cloud(self, job: Job) -> Outcome:
        assert self.cloud is not None
        try:
            res = encode_from_store(BatchRef(job.device, job.batch), self.cloud)
        except EncodeCancelledError:
            log.info("encode_cancelled", device=job.device, batch=job.batch)
            return Outcome.STOPPED
        except Exception as exc:
            if disk_full(exc):
                return self._disk_full(job, "encode", exc)
            # Counted as an attempt in the catalog: quarantined after max_attempts.
            log.error("batch_failed", device=job.device, batch=job.batch, step="encode",
                      error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self.metrics.failures.labels("encode").inc()
            return Outcome.RETRY
        if res.event is not None and not self.publish(job.device, res.event):
            return Outcome.STOPPED
        return Outcome(res.outcome)

    def _disk_full(self, job: Job, step: str, exc: BaseException) -> Outcome:
        # A full disk is nobody's fault and passes: wait (the ready event stays unacked)
        # rather than use up the batch's attempts and quarantine it.
        log.error("storage_full", device=job.device, batch=job.batch, step=step,
                  error=str(exc), retry_in_s=self.settings.work.retry_backoff_s)
        self.metrics.failures.labels("disk_full").inc()
        return Outcome.RETRY

    def _handle(self, job: Job) -> Outcome:
        bound = log.bind(device=job.device, batch=job.batch, source=job.source)
        try:
            bdir = self.storage.batch_dir(job.device, job.batch)
        except UnsafePathError as exc:
            bound.warning("batch_path_unsafe", detail=str(exc))
            self.metrics.malformed.labels("unsafe_path").inc()
            return Outcome.MISSING
        with self.storage.lock(bdir, blocking=job.source == "ready") as held:
            if not held and bdir.exists():
                bound.info("batch_busy")
                return Outcome.BUSY
            if not held or not bdir.exists():
                return self._gone(job)
            return self._locked(job, bdir)

    # --- the batch is gone -------------------------------------------------------------

    def _gone(self, job: Job) -> Outcome:
        bound = log.bind(device=job.device, batch=job.batch)
        found = None
        if job.first_ms is not None and job.last_ms is not None:
            found = self.storage.find_video(job.device, job.batch, job.first_ms, job.last_ms)
        if found is None:
            if job.source == "ready":
                bound.warning("ready_batch_missing")
                self.metrics.malformed.labels("missing_batch").inc()
            return Outcome.MISSING
        # A previous run purged the batch but may have died before the announcement.
        bound.info("video_already_written", location=found.event.get("location"))
        if not self.publish(job.device, found.event):
            return Outcome.STOPPED
        return Outcome.ALREADY_DONE

    # --- the batch is here and locked by us --------------------------------------------

    def _locked(self, job: Job, bdir: Path) -> Outcome:
        bound = log.bind(device=job.device, batch=job.batch)
        try:
            manifest = self.storage.read_manifest(bdir, job.device, job.batch)
        except FileNotFoundError:
            # An interrupted seal: the ingestor rolls such folders back at its start.
            bound.warning("ready_batch_unsealed")
            self.metrics.malformed.labels("unsealed_batch").inc()
            return Outcome.UNSEALED
        except BadManifestError as exc:
            return self._quarantine(job, bdir, "bad_manifest", detail=str(exc))
        except OSError as exc:
            return self._failed(job, bdir, "read_manifest", exc, attempts=None)
        if self.catalog is not None:
            # Idempotent: the ingestor normally recorded it already.
            with contextlib.suppress(InvalidValueError):
                self.catalog.record_sealed(SealedBatch(
                    device=job.device, batch=job.batch, frames=max(len(manifest.frames), 1),
                    first_capture_ms=manifest.first_capture_ms,
                    last_capture_ms=manifest.last_capture_ms))
        found = self.storage.find_video(job.device, job.batch, manifest.first_capture_ms,
                                        manifest.last_capture_ms)
        if found is not None:
            bound.info("video_already_written", location=found.event.get("location"))
            return self._finish(job, bdir, found, Outcome.ALREADY_DONE)
        attempts = self.storage.add_attempt(job.device, job.batch)
        if self.catalog is not None:
            self.catalog.start_encoding(job.device, job.batch)
        max_attempts = self.settings.work.max_attempts
        if attempts > max_attempts:
            return self._quarantine(job, bdir, "too_many_attempts", attempts=attempts - 1)
        try:
            result = self._encode(job, bdir, manifest, attempts)
        except EncodeCancelledError:
            self._undo_attempt(job)
            bound.info("encode_cancelled")
            return Outcome.STOPPED
        except Exception as exc:
            if disk_full(exc):
                self._undo_attempt(job)
                return self._disk_full(job, "encode", exc)
            # One bad batch must not stop the service: it is retried, then quarantined.
            return self._failed(job, bdir, "encode", exc, attempts=attempts)
        if isinstance(result, Outcome):
            return result
        return self._finish(job, bdir, result, Outcome.ENCODED)

    def _undo_attempt(self, job: Job) -> None:
        # A shutdown is not the batch's fault; the count is for crashes and errors.
        path = self.storage.attempts_dir / f"{job.device}--{job.batch}"
        with contextlib.suppress(OSError, ValueError):
            n = int(path.read_text().strip()) - 1
            if n <= 0:
                path.unlink()
            else:
                atomic_write(path, str(n).encode())

    def _encode(self, job: Job, bdir: Path, manifest: Manifest,
                attempt: int) -> FoundVideo | Outcome:
        bound = log.bind(device=job.device, batch=job.batch)
        storage = self.storage
        inputs = storage.frame_inputs(bdir, manifest)
        final = storage.free_video_path(job.device, job.batch, manifest.first_capture_ms,
                                        manifest.last_capture_ms)
        partial = storage.partial_path(final)
        make_dirs(final.parent)
        storage.remove_partials(final)
        bound.info("encode_started", frames=len(inputs), attempt=attempt, source=job.source,
                   video=final.relative_to(storage.root).as_posix())
        try:
            result = encode_video(inputs, partial, self.options, cancel=self.cancel)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        for reason, n in result.skipped.items():
            self.metrics.frames_skipped.labels(reason).inc(n)
        if result.frames_skipped:
            bound.warning("frames_skipped", skipped=dict(result.skipped))
        if result.frames_written == 0:
            partial.unlink(missing_ok=True)
            return self._quarantine(job, bdir, "no_decodable_frame",
                                    frames=len(inputs), skipped=dict(result.skipped))
        try:
            # Videos show what cameras saw: not for every local user (docs/security.md).
            partial.chmod(0o640)
            fsync_file(partial)
            info = probe_video(partial)
            if (info.codec != "h264" or info.frames != result.frames_written
                    or (info.width, info.height) != (result.width, result.height)):
                raise VerifyError(
                    f"wrote {result.frames_written} frames {result.width}x{result.height}, "
                    f"file has {info.frames} {info.codec} {info.width}x{info.height}")
            size = partial.stat().st_size
            location = final.relative_to(storage.root).as_posix()
            event = VideoEvent(
                device=job.device, batch=job.batch, location=location,
                frames=result.frames_written, frames_skipped=result.frames_skipped,
                duration_s=info.duration_s, size=size,
                first_capture_ms=manifest.first_capture_ms,
                last_capture_ms=manifest.last_capture_ms).to_obj()
            if result.thumbnail_jpeg is not None:
                atomic_write(final.with_suffix(".jpg"), result.thumbnail_jpeg)
            atomic_write(final.with_suffix(".json"),
                         json.dumps(event, separators=(",", ":"), sort_keys=True).encode())
            partial.replace(final)
            fsync_dir(final.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        fps = result.frames_written / result.encode_seconds if result.encode_seconds else 0.0
        self.metrics.frames_encoded.inc(result.frames_written)
        self.metrics.encode_seconds.observe(result.encode_seconds)
        self.metrics.encode_fps.set(fps)
        self.metrics.video_bytes.inc(size)
        bound.info("video_written", location=location, frames=result.frames_written,
                   frames_skipped=result.frames_skipped, duration_s=event["duration_s"],
                   bytes=size, width=result.width, height=result.height,
                   encode_s=round(result.encode_seconds, 3), fps=round(fps, 1))
        return FoundVideo(mp4=final, event=event)

    def _record(self, job: Job, bdir: Path, video: FoundVideo) -> None:
        """Record the video row (signed) unless it is there; raises CatalogError."""
        if self.catalog is None or self.catalog.get_video(job.device, job.batch) is not None:
            return
        ev = video.event
        source_sha, _size = batch_source_sha256(bdir)
        thumb = video.mp4.with_suffix(".jpg")
        row = VideoRow(
            device=job.device, batch=job.batch, location=str(ev["location"]),
            thumbnail=(thumb.relative_to(self.storage.root).as_posix()
                       if thumb.is_file() else None),
            frames=int(ev["frames"]), skipped=int(ev.get("frames_skipped", 0)),
            duration_s=float(ev["duration_s"]), bytes=video.mp4.stat().st_size,
            codec=str(ev.get("codec", "h264")), first_capture_ms=int(ev["first_capture_ms"]),
            last_capture_ms=int(ev["last_capture_ms"]), sha256=sha256_file(video.mp4),
            pack_sha256=source_sha, created_ms=time.time_ns() // 1_000_000)
        if self.signing_key is not None:
            row = row.model_copy(update={"signature": sign_video(row, self.signing_key)})
        self.catalog.record_video(row)

    def _finish(self, job: Job, bdir: Path, video: FoundVideo, outcome: Outcome) -> Outcome:
        bound = log.bind(device=job.device, batch=job.batch)
        # The row commits before the batch is released: a database outage keeps the
        # batch (CatalogError → retry), never loses it.
        try:
            self._record(job, bdir, video)
        except InvalidValueError as exc:
            bound.error("catalog_value_refused", error=str(exc))
        # The note outlives a crash between the purge and the PUBACK: the next start
        # publishes what it names, so an announcement is never lost with the batch.
        self.storage.note_unpublished(job.device, job.batch, video.mp4)
        try:
            self.storage.purge(bdir)
            bound.info("batch_purged", location=f"batches/{job.device}/{job.batch}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            # The video is safe; a later scan finds the batch with its video and retries.
            bound.error("batch_purge_failed", error=str(exc))
            self.metrics.failures.labels("purge").inc()
        else:
            if self.catalog is not None:
                try:
                    self.catalog.mark_purged(job.device, job.batch)
                except CatalogError as exc:
                    # Only the state lags ("encoded"); the video row is committed.
                    bound.warning("catalog_mark_purged_failed", error=str(exc)[:300])
        self.storage.clear_attempts(job.device, job.batch)
        if not self.publish(job.device, video.event):
            return Outcome.STOPPED
        self.storage.clear_unpublished(job.device, job.batch)
        return outcome

    def publish_unannounced(self) -> int:
        """Publish the videos a previous run wrote and purged but never announced.

        Returns:
            How many were published.
        """
        done = 0
        for device, batch, mp4 in self.storage.unpublished():
            event = self.storage.read_sidecar(mp4)
            if event is None or not mp4.is_file():
                log.warning("unannounced_video_gone", device=device, batch=batch,
                            video=str(mp4))
                self.storage.clear_unpublished(device, batch)
                continue
            if not self.publish(device, event):
                break
            log.info("video_announced_late", device=device, batch=batch,
                     location=event.get("location"))
            self.storage.clear_unpublished(device, batch)
            done += 1
        return done

    # --- failures ----------------------------------------------------------------------

    def _failed(self, job: Job, bdir: Path, step: str, exc: BaseException,
                attempts: int | None) -> Outcome:
        log.error("batch_failed", device=job.device, batch=job.batch, step=step,
                  attempt=attempts, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self.metrics.failures.labels(step).inc()
        if attempts is None or attempts < self.settings.work.max_attempts:
            return Outcome.RETRY
        return self._quarantine(job, bdir, "failed", step=step, attempts=attempts,
                                error=f"{type(exc).__name__}: {exc}")

    def _quarantine(self, job: Job, bdir: Path, reason: str, **detail: Any) -> Outcome:
        record = {
            "reason": reason, "device": job.device, "batch": job.batch,
            "encoder": self.account, "at": dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds"), **detail,
        }
        try:
            dest = self.storage.quarantine(bdir, record)
        except OSError as exc:
            log.error("batch_quarantine_failed", device=job.device, batch=job.batch,
                      reason=reason, error=str(exc))
            self.metrics.failures.labels("quarantine").inc()
            return Outcome.FAILED
        self.storage.clear_attempts(job.device, job.batch)
        if self.catalog is not None:
            try:
                self.catalog.quarantine(job.device, job.batch,
                                        json.dumps(record, sort_keys=True, default=str))
            except CatalogError as exc:
                log.warning("catalog_quarantine_failed", device=job.device, batch=job.batch,
                            error=str(exc)[:300])
        log.warning("batch_quarantined", device=job.device, batch=job.batch, reason=reason,
                    location=dest.relative_to(self.storage.root).as_posix(), **detail)
        self.metrics.quarantined.labels(reason).inc()
        return Outcome.QUARANTINED
