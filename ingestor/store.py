"""Durable frame files, batch sealing and the startup scan (layout: docs/storage.md).

Every file appears atomically: written under a dot-name in its final folder, fsynced,
renamed into place, and the folder fsynced. :meth:`Store.write_frames` does that for a
whole group of frames with one folder fsync per folder (group commit), so a burst of
frames costs one round of syncs, not one per frame.

Sealing moves the batch's frames with ``rename`` into ``batches/<id>/<batch>/frames/``
and writes ``manifest.json`` last: a batch folder without a manifest is an interrupted
seal, which :meth:`Store.scan` rolls back (frames moved back) at the next start.

Each frame file carries the metadata its name cannot (capture_ms, clock flag, CRC) in
the extended attribute ``user.camstack``, written before the fsync so it is durable
with the data; where the file system has no user xattrs the scan recomputes the CRC
and marks the capture time unknown (``capture_ms`` 0, ``clock_synced`` false) unless
the name's ts is the capture time (it cannot tell), see docs/ingestor.md.

Not thread-safe: one writer thread owns the store.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from contract.events import BadManifestError, Manifest
from contract.layout import (
    BATCH_FRAMES,
    BATCHES_DIR,
    FRAMES_DIR,
    MANIFEST,
    STATE_DIR,
    TMP_PREFIX,
    FrameKey,
    FrameMeta,
    parse_batch_counter,
    parse_frame_file_name,
    utc_date,
)
from ingestor.batcher import SealPlan, manifest
from ingestor.diskproc import DiskProcess
from ingestor.durable import XATTR, FileJob, fsync_dir, write_durable

log = structlog.get_logger("ingestor.store")

def _meta_xattr(meta: FrameMeta) -> bytes:
    return json.dumps({"capture_ms": meta.capture_ms, "clock_synced": meta.clock_synced,
                       "crc32": meta.crc32}, separators=(",", ":")).encode()


@dataclass
class PendingFrames:
    """A group of frames between :meth:`Store.begin_frames` and its finish or abort."""

    temps: list[tuple[Path, Path]] = field(default_factory=list)
    keys: list[FrameKey] = field(default_factory=list)
    in_child: bool = False
    """Sent to the disk process; its answer is still to be read."""
    dirs: list[Path] = field(default_factory=list)
    """The folders its temp files go to (kept while it is in flight)."""


@dataclass
class ScanResult:
    """What the startup scan found and repaired."""

    unsealed: dict[str, list[FrameMeta]] = field(default_factory=dict)
    """Stored frames waiting for a batch, per device."""
    counters: dict[str, int] = field(default_factory=dict)
    """Highest batch counter used, per device."""
    sealed: list[Manifest] = field(default_factory=list)
    """Manifests of sealed batches still on disk (to announce again)."""
    rolled_back: list[str] = field(default_factory=list)
    """Interrupted seals undone (``batches/<id>/<batch>``)."""
    temp_removed: int = 0
    metadata_recovered: int = 0
    """Frames without the xattr (CRC recomputed, capture time unknown)."""


class Store:
    """The ingestor's side of the storage root.

    Args:
        root: Storage root.
        sync_threads: Threads that fsync a group's files at the same time (1: in turn).
    """

    def __init__(self, root: Path, sync_threads: int = 8) -> None:
        self.root = root
        self.frames_dir = root / FRAMES_DIR
        self.batches_dir = root / BATCHES_DIR
        self.state_dir = root / STATE_DIR / "ingestor"
        self.counters_dir = self.state_dir / "batch_counters"
        self._index: set[FrameKey] = set()
        self._batches: dict[str, dict[str, list[FrameKey]]] = {}
        self._durable_dirs: set[Path] = set()
        # Folders a group in the disk child writes into: a seal must not remove them
        # while the child has not created its temp file there yet.
        self._busy_dirs: collections.Counter[Path] = collections.Counter()
        # Frame groups are written by a child process (ingestor/diskproc.py): the one
        # durable write path, the same in tests as in production.
        self._disk: DiskProcess | None = DiskProcess(sync_threads)
        self._disk.start()

    # ----------------------------------------------------------------- index
    def contains(self, key: FrameKey) -> bool:
        """Whether the frame is stored (in ``frames/`` or an unpurged batch)."""
        return key in self._index

    @property
    def indexed(self) -> int:
        """Frames known to be on disk."""
        return len(self._index)

    # ----------------------------------------------------------------- folders
    def ensure_dir(self, path: Path) -> None:
        """Create ``path`` (and parents) so that the new entries are durable.

        Args:
            path: A folder under the root.
        """
        if path in self._durable_dirs:
            return
        missing = []
        p = path
        while not p.is_dir():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o750)
            fsync_dir(d.parent)
        self._durable_dirs.add(path)

    # ----------------------------------------------------------------- frames
    def write_frames(self, frames: list[tuple[FrameMeta, bytes]]) -> None:
        """Store a group of frames durably (group commit), then index them.

        Idempotent: writing a frame again replaces it with the same bytes.

        Args:
            frames: Metadata and JPEG bytes.

        Raises:
            OSError: Nothing of the group may be considered stored; retry the group.
        """
        if frames:
            self.finish_frames(self.begin_frames(frames))

    def begin_frames(self, frames: list[tuple[FrameMeta, bytes]]) -> PendingFrames:
        """First half of :meth:`write_frames`: write the temp files, start their fsyncs.

        The caller may begin the next group before finishing this one (the disk syncs
        one group while the next is written), and must then finish them in order.

        Args:
            frames: Metadata and JPEG bytes.

        Returns:
            The group in flight, for :meth:`finish_frames` or :meth:`abort_frames`.

        Raises:
            OSError: Nothing of the group was kept; retry the group.
        """
        pending = PendingFrames()
        jobs: list[FileJob] = []
        try:
            for meta, data in frames:
                folder = self.frames_dir / meta.device / utc_date(meta.ts_ms)
                self.ensure_dir(folder)
                final = folder / meta.name
                tmp = folder / f"{TMP_PREFIX}{meta.name}.tmp"
                pending.temps.append((tmp, final))
                pending.keys.append(meta.key)
                jobs.append((str(tmp), str(final), data, _meta_xattr(meta)))
            if self._disk is None:
                raise OSError(errno.EIO, "store closed")
            self._disk.submit(jobs)
            pending.in_child = True
            pending.dirs = sorted({tmp.parent for tmp, _ in pending.temps})
            self._busy_dirs.update(pending.dirs)
        except OSError:
            self.abort_frames(pending)
            raise
        return pending

    def _release_dirs(self, pending: PendingFrames) -> None:
        self._busy_dirs.subtract(pending.dirs)
        self._busy_dirs = +self._busy_dirs  # drop the zero counts
        pending.dirs = []

    def finish_frames(self, pending: PendingFrames) -> None:
        """Second half of :meth:`write_frames`: wait for the fsyncs, rename, sync folders.

        Raises:
            OSError: Nothing of the group may be considered stored; retry the group.
        """
        if not pending.in_child:
            return
        pending.in_child = False
        try:
            if self._disk is None:
                raise OSError(errno.EIO, "store closed")
            self._disk.wait()  # the child renamed and synced everything
        except OSError:
            self.abort_frames(pending)
            raise
        finally:
            self._release_dirs(pending)
        for key in pending.keys:
            self._index.add(key)

    def abort_frames(self, pending: PendingFrames) -> None:
        """Give up a group begun with :meth:`begin_frames`: close and remove its temps."""
        if pending.in_child:
            pending.in_child = False
            assert self._disk is not None
            with contextlib.suppress(OSError):
                self._disk.wait()  # its answer comes in order; the group is given up anyway
        self._release_dirs(pending)
        for tmp, _ in pending.temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # A failing disk may have lost folders we believed in: check them again.
        self._durable_dirs.clear()

    def close(self) -> None:
        """Stop the disk process."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    # ----------------------------------------------------------------- sealing
    def _save_counter(self, device: str, counter: int) -> None:
        self.ensure_dir(self.counters_dir)
        write_durable(self.counters_dir / device, f"{counter}\n".encode())

    def seal(self, plan: SealPlan, sealed_ms: int) -> Manifest | None:
        """Move the plan's frames into a new batch and write its manifest last.

        Args:
            plan: From the batcher.
            sealed_ms: Seal time (Unix ms) for the manifest.

        Returns:
            The manifest, or None if none of the frames was found (nothing sealed).

        Raises:
            OSError: The seal did not complete; a retry (or the next start) finishes or
                rolls it back.
        """
        # The counter is durable before the name is used: a crash never reuses a name.
        self._save_counter(plan.device, plan.counter)
        bdir = self.batches_dir / plan.device / plan.batch
        dst_dir = bdir / BATCH_FRAMES
        self.ensure_dir(dst_dir)
        moved: list[FrameMeta] = []
        src_dirs: set[Path] = set()
        for f in plan.frames:
            src = self.root / f.rel_path
            dst = dst_dir / f.name
            try:
                os.rename(src, dst)
                src_dirs.add(src.parent)
            except FileNotFoundError:
                if not dst.exists():
                    log.warning("frame_missing_at_seal", device=plan.device, batch=plan.batch,
                                file=f.rel_path)
                    continue
            moved.append(f)
        fsync_dir(dst_dir)
        for d in src_dirs:
            fsync_dir(d)
        if not moved:
            shutil.rmtree(bdir)
            fsync_dir(bdir.parent)
            return None
        real = SealPlan(plan.device, plan.batch, plan.counter, tuple(moved), plan.reason)
        man = manifest(real, sealed_ms)
        write_durable(bdir / MANIFEST, man.to_json())
        self._batches.setdefault(plan.device, {})[plan.batch] = [f.key for f in moved]
        for d in src_dirs:
            self._remove_if_empty(d)
        self.prune_purged(plan.device)
        return man

    def _remove_if_empty(self, folder: Path) -> None:
        if self._busy_dirs[folder]:
            return  # the next group is about to write here (in the disk child)
        try:
            folder.rmdir()
        except OSError:
            return
        self._durable_dirs.discard(folder)
        with contextlib.suppress(OSError):
            fsync_dir(folder.parent)

    def batch_exists(self, device: str, batch: str) -> bool:
        """Whether a sealed batch is still waiting for the encoder (its folder is there)."""
        return (self.batches_dir / device / batch).is_dir()

    def prune_purged(self, device: str) -> int:
        """Forget the keys of ``device``'s batches the encoder has purged.

        Returns:
            How many frame keys were forgotten.
        """
        batches = self._batches.get(device, {})
        gone = [b for b in batches if not (self.batches_dir / device / b).exists()]
        n = 0
        for b in gone:
            for key in batches.pop(b):
                self._index.discard(key)
                n += 1
        return n

    # ----------------------------------------------------------------- startup scan
    def scan(self) -> ScanResult:
        """Repair and index what is on disk; run once before anything else.

        Removes dot-temp files, rolls back interrupted seals, indexes every frame in
        ``frames/`` and in sealed batches, restores batch counters.

        Returns:
            What was found.
        """
        res = ScanResult()
        self._index.clear()
        self._batches.clear()
        self._durable_dirs.clear()
        if self.batches_dir.is_dir():
            for dev_dir in sorted(self.batches_dir.iterdir()):
                if dev_dir.name.startswith(TMP_PREFIX) or not dev_dir.is_dir():
                    continue
                for bdir in sorted(dev_dir.iterdir()):
                    if bdir.name.startswith(TMP_PREFIX) or not bdir.is_dir():
                        continue
                    self._scan_batch(dev_dir.name, bdir, res)
        if self.frames_dir.is_dir():
            for dev_dir in sorted(self.frames_dir.iterdir()):
                if dev_dir.name.startswith(TMP_PREFIX) or not dev_dir.is_dir():
                    continue
                self._scan_frames(dev_dir.name, dev_dir, res)
        if self.counters_dir.is_dir():
            for f in self.counters_dir.iterdir():
                if f.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        f.unlink()
                    continue
                try:
                    value = int(f.read_text().strip() or 0)
                except (OSError, ValueError):
                    continue
                res.counters[f.name] = max(res.counters.get(f.name, 0), value)
        return res

    def _scan_batch(self, device: str, bdir: Path, res: ScanResult) -> None:
        counter = parse_batch_counter(bdir.name, device)
        if counter is not None:
            res.counters[device] = max(res.counters.get(device, 0), counter)
        man_path = bdir / MANIFEST
        for tmp in bdir.glob(f"{TMP_PREFIX}*.tmp"):
            tmp.unlink()
            res.temp_removed += 1
        if man_path.is_file():
            try:
                man = Manifest.parse(man_path.read_bytes(), device, bdir.name)
                keys = [(device, f.boot_id, f.frame_seq) for f in man.frames
                        if f.boot_id is not None and f.frame_seq is not None]
                if len(keys) != len(man.frames):
                    raise BadManifestError("a frame without boot_id/frame_seq")
            except (OSError, BadManifestError) as exc:
                log.error("manifest_unreadable", device=device, batch=bdir.name, error=str(exc))
                return
            self._index.update(keys)
            self._batches.setdefault(device, {})[bdir.name] = keys
            res.sealed.append(man)
            return
        # No manifest: the seal was interrupted. Put the frames back where they were.
        src = bdir / BATCH_FRAMES
        touched: set[Path] = set()
        if src.is_dir():
            for f in sorted(src.iterdir()):
                parsed = parse_frame_file_name(f.name)
                if parsed is None:
                    continue
                folder = self.frames_dir / device / utc_date(parsed[0])
                self.ensure_dir(folder)
                target = folder / f.name
                if target.exists():
                    f.unlink()
                else:
                    os.rename(f, target)
                touched.add(folder)
        for folder in touched:
            fsync_dir(folder)
        shutil.rmtree(bdir)
        fsync_dir(bdir.parent)
        res.rolled_back.append(f"{BATCHES_DIR}/{device}/{bdir.name}")
        log.warning("seal_rolled_back", device=device, batch=bdir.name)

    def _scan_frames(self, device: str, dev_dir: Path, res: ScanResult) -> None:
        metas = res.unsealed.setdefault(device, [])
        for day in sorted(dev_dir.iterdir()):
            if not day.is_dir():
                continue
            for f in sorted(day.iterdir()):
                if f.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(OSError):
                        f.unlink()
                    res.temp_removed += 1
                    continue
                parsed = parse_frame_file_name(f.name)
                if parsed is None:
                    continue
                key = (device, parsed[1], parsed[2])
                if key in self._index:
                    # Already in a sealed batch (a crash between a seal's rename and the
                    # folder fsync can leave both names): the batch copy wins.
                    f.unlink()
                    continue
                metas.append(self._read_meta(device, f, parsed, res))
                self._index.add(key)
        if not metas:
            del res.unsealed[device]

    @staticmethod
    def _read_meta(device: str, path: Path, parsed: tuple[int, int, int],
                   res: ScanResult) -> FrameMeta:
        ts_ms, boot_id, seq = parsed
        size = path.stat().st_size
        try:
            raw = json.loads(os.getxattr(path, XATTR))
            return FrameMeta(device, boot_id, seq, int(raw["capture_ms"]),
                             bool(raw["clock_synced"]), ts_ms, size, int(raw["crc32"]))
        except (OSError, ValueError, KeyError, TypeError):
            res.metadata_recovered += 1
            crc = zlib.crc32(path.read_bytes()) & 0xFFFFFFFF
            return FrameMeta(device, boot_id, seq, 0, False, ts_ms, size, crc)
