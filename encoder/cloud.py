"""One batch from its pack in the object store to a video in the store and a catalog row.

:func:`encode_from_store` is the encode path of the S3 backend. It takes a batch
reference, the store, the catalog and a scratch folder of its own, and touches nothing
else on disk (it never sees the ingestor's storage root), so any runner can call it:
the encoder service here, other runners later (issue 13). In order:

1. **Done already?** A video row for the batch means an earlier run finished it (or
   died after the row): the pack is deleted, the batch marked purged, and the video
   event (built from the row) returned to be published again.
2. **Download** the pack (``packs/<id>/<batch>.tar``) into the scratch folder, hashing
   it on the way; a SHA-256 that differs from the catalog row's is **quarantined** (a
   row with the reason, the pack kept under ``quarantine/<id>/<batch>/``). A store that
   does not answer is a retry later, not an attempt.
3. ``start_encoding`` counts the attempt; past ``max_attempts`` the batch is quarantined.
4. **Read** the pack with :class:`objstore.pack.PackReader` (name, size and CRC-32 of
   every frame checked against the manifest) into scratch files; **encode** to a
   scratch MP4 (the same muxer as the filesystem path), reopen and verify.
5. **Upload** thumbnail, sidecar and MP4 to ``videos/<id>/<date>/<name>.*``, each with
   its SHA-256; **record** the video row (MP4 and pack SHA-256, Ed25519 signature).
6. **Delete** the pack, ``mark_purged``; return the event (location = the MP4's key).

Steps 5 and 6 retry the store and the database with backoff until they succeed or the
service stops: the encoded MP4 is in hand and an outage is nobody's attempt. Every
write is idempotent, so a redelivered ready event at any point converges on one video
row and one MP4 key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog import (
    BatchState,
    CatalogError,
    InvalidValueError,
    SqlCatalog,
    VideoRow,
)
from catalog.signing import sha256_file, sign_video
from contract.events import BadManifestError, Manifest, VideoEvent
from contract.layout import QUARANTINE_DIR, pack_key, video_dir, video_stems
from encoder.metrics import EncoderMetrics
from encoder.muxer import (
    EncodeCancelledError,
    EncodeOptions,
    FrameInput,
    encode_video,
    probe_video,
)
from objstore import NotFoundError, ObjectStore, ObjectStoreError
from objstore.pack import PackError, PackReader

log = structlog.get_logger("encoder.cloud")

T = TypeVar("T")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BatchRef:
    """Which batch: device and batch name (the pack key follows from them)."""

    device: str
    batch: str


@dataclass(frozen=True)
class StoreResult:
    """How :func:`encode_from_store` ended, and the video event to publish (if any)."""

    outcome: str
    """``encoded``, ``already_done``, ``quarantined``, ``missing``, ``retry``, ``stopped``."""
    event: dict[str, Any] | None = None
    detail: str = ""


@dataclass
class CloudJob:
    """Everything the encode path needs besides the batch (built once per service)."""

    store: ObjectStore
    catalog: SqlCatalog
    scratch: Path
    options: EncodeOptions
    signing_key: Ed25519PrivateKey
    pack_prefix: str = "packs/"
    max_attempts: int = 3
    account: str = "encoder"
    metrics: EncoderMetrics | None = None
    cancel: threading.Event | None = None
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0


def event_from_row(row: VideoRow) -> dict[str, Any]:
    """The video event of a recorded video (what the encoder published for it)."""
    return VideoEvent(device=row.device, batch=row.batch, location=row.location,
                      frames=row.frames, frames_skipped=row.skipped,
                      duration_s=row.duration_s, size=row.bytes,
                      first_capture_ms=row.first_capture_ms,
                      last_capture_ms=row.last_capture_ms, codec=row.codec).to_obj()


def _retry(job: CloudJob, what: str, ref: BatchRef, fn: Callable[[], T]) -> T:
    """Run ``fn`` until it succeeds; store and database outages wait with backoff.

    Raises:
        EncodeCancelledError: The service stops while waiting.
    """
    delay = job.retry_min_s
    while True:
        try:
            return fn()
        except InvalidValueError:
            raise
        except (ObjectStoreError, CatalogError) as exc:
            if isinstance(exc, NotFoundError):
                raise
            log.warning("store_or_catalog_retry", device=ref.device, batch=ref.batch,
                        step=what, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                        retry_in_s=round(delay, 2))
            if job.metrics is not None:
                job.metrics.failures.labels(what).inc()
        if job.cancel is not None:
            if job.cancel.wait(delay):
                raise EncodeCancelledError(what)
        else:
            time.sleep(delay)
        delay = min(delay * 2, job.retry_max_s)


def _cleanup(job: CloudJob, ref: BatchRef, key: str) -> None:
    """Delete the pack (idempotent) and mark the batch purged."""
    _retry(job, "pack_delete", ref, lambda: job.store.delete(key))
    _retry(job, "catalog", ref, lambda: job.catalog.mark_purged(ref.device, ref.batch))


def _download(job: CloudJob, key: str, dest: Path) -> str:
    h = hashlib.sha256()
    with job.store.open(key) as src, dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _quarantine(job: CloudJob, ref: BatchRef, key: str, reason: str, pack: Path | None,
                **detail: Any) -> StoreResult:
    record = {"reason": reason, "device": ref.device, "batch": ref.batch,
              "encoder": job.account, "at_ms": time.time_ns() // 1_000_000,
              "pack_key": key, **detail}
    qdir = f"{QUARANTINE_DIR}/{ref.device}/{ref.batch}"
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    _retry(job, "quarantine", ref, lambda: job.store.put_bytes(
        f"{qdir}/reason.json", body, content_type="application/json"))
    if pack is not None and pack.is_file():
        sha = sha256_file(pack)
        size = pack.stat().st_size

        def keep() -> None:
            with pack.open("rb") as f:
                job.store.put_stream(f"{qdir}/pack.tar", f, sha256=sha, size=size,
                                     content_type="application/x-tar")
        _retry(job, "quarantine", ref, keep)
        _retry(job, "pack_delete", ref, lambda: job.store.delete(key))
    _retry(job, "catalog", ref, lambda: job.catalog.quarantine(
        ref.device, ref.batch, json.dumps(record, sort_keys=True)))
    log.warning("batch_quarantined", device=ref.device, batch=ref.batch, reason=reason,
                location=qdir, **detail)
    if job.metrics is not None:
        job.metrics.quarantined.labels(reason).inc()
    return StoreResult("quarantined", detail=reason)


def quarantine_batch(ref: BatchRef, job: CloudJob, reason: str, **detail: Any) -> StoreResult:
    """Quarantine a batch from outside an encode (a runner giving up on its job).

    The catalog row and ``quarantine/<id>/<batch>/reason.json`` say why; the pack stays
    where it is (the lifecycle rule on the pack prefix removes it later), so it can be
    looked at or re-queued by hand.
    """
    row = _retry(job, "catalog", ref, lambda: job.catalog.get_batch(ref.device, ref.batch))
    key = (row.pack_key if row is not None and row.pack_key
           else pack_key(ref.device, ref.batch, job.pack_prefix))
    return _quarantine(job, ref, key, reason, None, **detail)


def _video_key(job: CloudJob, ref: BatchRef, first_ms: int, last_ms: int,
               mp4_sha: str) -> str:
    """``videos/<id>/<date>/<id>_<first>_<last>-<sha256[:12]>.mp4``.

    The content's digest is part of the name because two runs of one batch may overlap
    (a job redelivered while its first delivery still runs elsewhere) and x264's output
    depends on its thread count, so two machines make different bytes. Under one shared
    name the later upload could replace the MP4 whose digest the (first) row recorded,
    and `verify` would report a tampered video. With the digest in the name each run
    writes its own objects and the run whose row lost deletes its own. A re-run on the
    same machine makes the same bytes, hence the same key (overwritten, no orphan).
    """
    folder = video_dir(ref.device, first_ms)
    stem, alt = video_stems(ref.device, ref.batch, first_ms, last_ms)
    key = f"{folder}/{stem}-{mp4_sha[:12]}.mp4"
    other = _retry(job, "catalog", ref, lambda: job.catalog.video_by_location(key))
    if other is not None and other.batch != ref.batch:
        key = f"{folder}/{alt}-{mp4_sha[:12]}.mp4"
    return key


def encode_from_store(ref: BatchRef, job: CloudJob) -> StoreResult:
    """Turn the batch's pack into a video in the store and a catalog row.

    Args:
        ref: The batch.
        job: Store, catalog, scratch folder, options, key.

    Returns:
        The outcome, with the event to publish when there is a video.

    Raises:
        EncodeCancelledError: The service is stopping (nothing is lost: the pack and the
            row stay; the ready event is not acked).
    """
    bound = log.bind(device=ref.device, batch=ref.batch)
    cat = job.catalog
    done = _retry(job, "catalog", ref, lambda: cat.get_video(ref.device, ref.batch))
    row = _retry(job, "catalog", ref, lambda: cat.get_batch(ref.device, ref.batch))
    key = (row.pack_key if row is not None and row.pack_key
           else pack_key(ref.device, ref.batch, job.pack_prefix))
    if done is not None:
        bound.info("video_already_written", location=done.location)
        _cleanup(job, ref, key)
        return StoreResult("already_done", event_from_row(done))
    if row is None:
        bound.warning("ready_batch_missing", detail="no catalog row")
        return StoreResult("missing", detail="no catalog row")
    if row.state in (BatchState.QUARANTINED, BatchState.ENCODED, BatchState.PURGED):
        bound.info("batch_already_handled", state=row.state.value)
        return StoreResult("missing", detail=f"state {row.state.value}")
    if row.state is BatchState.SEALED or not row.pack_sha256:
        bound.warning("batch_not_uploaded")
        return StoreResult("missing", detail="not uploaded")
    # A folder of its own per run: the same batch may be in hand twice at once (a job
    # redelivered while its first delivery still runs in another thread).
    job.scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{ref.device}--{ref.batch}-", dir=job.scratch))
    (work / "frames").mkdir()
    try:
        return _encode(ref, job, row.pack_sha256, key, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _encode(ref: BatchRef, job: CloudJob, pack_sha: str, key: str, work: Path) -> StoreResult:
    bound = log.bind(device=ref.device, batch=ref.batch)
    cat, store = job.catalog, job.store
    pack = work / "pack.tar"
    try:
        got = _download(job, key, pack)
    except NotFoundError:
        again = _retry(job, "catalog", ref, lambda: cat.get_video(ref.device, ref.batch))
        if again is not None:  # another encoder finished it meanwhile
            return StoreResult("already_done", event_from_row(again))
        return _quarantine(job, ref, key, "pack_missing", None)
    except ObjectStoreError as exc:
        bound.warning("pack_download_failed", key=key, error=str(exc)[:300])
        if job.metrics is not None:
            job.metrics.failures.labels("download").inc()
        return StoreResult("retry", detail=str(exc)[:200])
    if got != pack_sha:
        return _quarantine(job, ref, key, "pack_checksum", pack, expected=pack_sha, got=got)
    attempts = _retry(job, "catalog", ref, lambda: cat.start_encoding(ref.device, ref.batch))
    if attempts is None:
        again = _retry(job, "catalog", ref, lambda: cat.get_video(ref.device, ref.batch))
        if again is not None:
            return StoreResult("already_done", event_from_row(again))
        return StoreResult("missing", detail="state moved on")
    if attempts > job.max_attempts:
        return _quarantine(job, ref, key, "too_many_attempts", pack, attempts=attempts - 1)
    # Read the pack: every frame checked (name, size, CRC-32) against its manifest.
    inputs: list[FrameInput] = []
    try:
        with pack.open("rb") as f:
            reader = PackReader(f)
            _ = reader.manifest
            manifest = Manifest.parse(reader.manifest_bytes, ref.device, ref.batch)
            for fr in reader.frames():
                p = work / "frames" / f"{fr.index:06d}.jpg"
                p.write_bytes(fr.data)
                m = manifest.frames[fr.index]
                inputs.append(FrameInput(ts_ms=m.ts_ms, path=p, crc32=m.crc32))
    except BadManifestError as exc:
        return _quarantine(job, ref, key, "bad_manifest", pack, detail=str(exc)[:500])
    except PackError as exc:
        return _quarantine(job, ref, key, "bad_pack", pack, detail=str(exc)[:500])
    if len(inputs) != len(manifest.frames):
        return _quarantine(job, ref, key, "bad_pack", pack, detail="frame count")
    out = work / "video.mp4"
    bound.info("encode_started", frames=len(inputs), attempt=attempts, source="store")
    result = encode_video(inputs, out, job.options, cancel=job.cancel)
    if job.metrics is not None:
        for reason, n in result.skipped.items():
            job.metrics.frames_skipped.labels(reason).inc(n)
    if result.frames_written == 0:
        return _quarantine(job, ref, key, "no_decodable_frame", pack,
                           frames=len(inputs), skipped=dict(result.skipped))
    info = probe_video(out)
    if (info.codec != "h264" or info.frames != result.frames_written
            or (info.width, info.height) != (result.width, result.height)):
        bound.error("video_verify_failed", codec=info.codec, frames=info.frames)
        return StoreResult("retry", detail="verify")
    size = out.stat().st_size
    mp4_sha = sha256_file(out)
    location = _video_key(job, ref, manifest.first_capture_ms, manifest.last_capture_ms,
                          mp4_sha)
    stem = location.removesuffix(".mp4")
    event = VideoEvent(device=ref.device, batch=ref.batch, location=location,
                       frames=result.frames_written, frames_skipped=result.frames_skipped,
                       duration_s=info.duration_s, size=size,
                       first_capture_ms=manifest.first_capture_ms,
                       last_capture_ms=manifest.last_capture_ms).to_obj()
    thumb = f"{stem}.jpg" if result.thumbnail_jpeg is not None else None
    if result.thumbnail_jpeg is not None:
        jpeg = result.thumbnail_jpeg
        _retry(job, "upload", ref, lambda: store.put_bytes(
            f"{stem}.jpg", jpeg, content_type="image/jpeg"))
    sidecar = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    _retry(job, "upload", ref, lambda: store.put_bytes(
        f"{stem}.json", sidecar, content_type="application/json"))

    def put_mp4() -> None:
        with out.open("rb") as f:
            store.put_stream(location, f, sha256=mp4_sha, size=size, content_type="video/mp4")
    _retry(job, "upload", ref, put_mp4)
    video = VideoRow(device=ref.device, batch=ref.batch, location=location, thumbnail=thumb,
                     frames=result.frames_written, skipped=result.frames_skipped,
                     duration_s=float(event["duration_s"]), bytes=size, codec="h264",
                     first_capture_ms=manifest.first_capture_ms,
                     last_capture_ms=manifest.last_capture_ms, sha256=mp4_sha,
                     pack_sha256=pack_sha, created_ms=time.time_ns() // 1_000_000)
    video = video.model_copy(update={"signature": sign_video(video, job.signing_key)})
    _retry(job, "catalog", ref, lambda: cat.record_video(video))
    kept = _retry(job, "catalog", ref, lambda: cat.get_video(ref.device, ref.batch))
    if job.metrics is not None:
        job.metrics.frames_encoded.inc(result.frames_written)
        job.metrics.encode_seconds.observe(result.encode_seconds)
        job.metrics.video_bytes.inc(size)
    bound.info("video_written", location=location, frames=result.frames_written,
               frames_skipped=result.frames_skipped, bytes=size, sha256=mp4_sha,
               encode_s=round(result.encode_seconds, 3))
    _cleanup(job, ref, key)
    bound.info("batch_purged", location=key)
    if kept is not None and kept.location != location:
        # Another encoder recorded this batch first: publish its video, drop ours.
        for ours in (location, f"{stem}.json", f"{stem}.jpg"):
            _retry(job, "upload", ref, functools.partial(store.delete, ours))
        return StoreResult("already_done", event_from_row(kept))
    return StoreResult("encoded", event)
