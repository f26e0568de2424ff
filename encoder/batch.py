"""Sealed batches and finished videos on disk: paths, locks, durable moves.

The storage layout is shared with the ingestor (docs/storage.md). Everything that
changes the disk here is ordered so a crash at any point leaves either the batch or
the finished video, never neither (docs/encoder.md, "Crash safety").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.events import Manifest
from contract.ids import DEVICE_ID_RE
from contract.ids import SAFE_NAME_RE as BATCH_NAME_RE
from contract.layout import video_dir, video_stems
from encoder.muxer import FrameInput

MANIFEST = "manifest.json"
REASON = "reason.json"
PARTIAL = ".partial"


class UnsafePathError(ValueError):
    """A device or batch name that would leave the storage root."""


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames, removals) durable.

    Args:
        path: The folder.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk.

    Args:
        path: The file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that also makes every new folder's entry durable.

    Args:
        path: The folder to create.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o750)
        fsync_dir(d.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so a reader sees the old one or the whole new one, durably.

    Args:
        path: Destination.
        data: Contents.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _abandoned(tmp: Path) -> bool:
    """Whether an :func:`atomic_write` temp file's writer is gone.

    Its name ends in ``.<pid>.partial``; the writer is gone when that process no
    longer exists (or the file is an hour old: another host's or container's).
    """
    try:
        pid = int(tmp.name[: -len(PARTIAL)].rsplit(".", 1)[1])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return True
    except PermissionError:
        pass
    try:
        return time.time() - tmp.stat().st_mtime > 3600
    except OSError:
        return False


@dataclass(frozen=True)
class FoundVideo:
    """A finished video of a batch: its MP4 exists and its sidecar names the batch."""

    mp4: Path
    event: dict[str, Any]


class Storage:
    """The storage root as the encoder sees it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.batches = root / "batches"
        self.videos = root / "videos"
        self.quarantine_root = root / "quarantine"
        self.state = root / "state" / "encoder"
        self.trash = self.state / "trash"
        self.attempts_dir = self.state / "attempts"
        self.unannounced_dir = self.state / "unannounced"

    def prepare(self) -> None:
        """Create the encoder's folders and empty the trash of an interrupted purge."""
        for d in (self.batches, self.videos, self.quarantine_root, self.trash,
                  self.attempts_dir, self.unannounced_dir):
            make_dirs(d)
        for leftover in self.trash.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        # A crash inside atomic_write leaves its temp file behind; nobody else would
        # ever remove it (scans skip dot files).
        for folder in (self.attempts_dir, self.unannounced_dir):
            for tmp in folder.glob(f".*{PARTIAL}"):
                if _abandoned(tmp):
                    tmp.unlink(missing_ok=True)

    def batch_dir(self, device: str, batch: str) -> Path:
        """The folder of a batch, proven to lie inside ``batches/``.

        Args:
            device: Device id.
            batch: Batch name.

        Returns:
            ``<root>/batches/<device>/<batch>``.

        Raises:
            UnsafePathError: A name with unsafe characters, or a symlink leading out.
        """
        if not DEVICE_ID_RE.fullmatch(device) or not BATCH_NAME_RE.fullmatch(batch):
            raise UnsafePathError(f"{device!r}/{batch!r}")
        path = self.batches / device / batch
        # Names are safe, but a symlinked device folder could still point elsewhere.
        real_parent = path.parent.resolve()
        if real_parent != self.batches.resolve() / device:
            raise UnsafePathError(f"{path} resolves outside {self.batches}")
        if path.is_symlink():
            raise UnsafePathError(f"{path} is a symlink")
        return path

    def read_manifest(self, batch_dir: Path, device: str, batch: str) -> Manifest:
        """Read and validate a batch's manifest.

        Args:
            batch_dir: The batch folder.
            device: Device id.
            batch: Batch name.

        Returns:
            The manifest.

        Raises:
            FileNotFoundError: The batch is not sealed.
            BadManifestError: Invalid.
        """
        return Manifest.parse((batch_dir / MANIFEST).read_bytes(), device, batch)

    @staticmethod
    def frame_inputs(batch_dir: Path, manifest: Manifest) -> list[FrameInput]:
        """The muxer's inputs, in manifest order.

        Args:
            batch_dir: The batch folder.
            manifest: Its manifest.

        Returns:
            One input per listed frame.
        """
        return [FrameInput(ts_ms=f.ts_ms, path=batch_dir / f.file, crc32=f.crc32)
                for f in manifest.frames]

    def sealed_batches(self, *, min_age_s: float = 0.0) -> list[tuple[str, str]]:
        """Batches with a manifest, oldest seal first.

        Args:
            min_age_s: Only batches whose manifest is at least this old.

        Returns:
            ``(device, batch)`` pairs.
        """
        found: list[tuple[float, str, str]] = []
        now = time.time()
        if not self.batches.is_dir():
            return []
        for dev_dir in self.batches.iterdir():
            if not dev_dir.is_dir() or dev_dir.is_symlink() or not DEVICE_ID_RE.fullmatch(
                    dev_dir.name):
                continue
            for bdir in dev_dir.iterdir():
                if not BATCH_NAME_RE.fullmatch(bdir.name) or bdir.is_symlink():
                    continue
                try:
                    mtime = (bdir / MANIFEST).stat().st_mtime
                except OSError:
                    continue
                if now - mtime >= min_age_s:
                    found.append((mtime, dev_dir.name, bdir.name))
        return [(d, b) for _, d, b in sorted(found)]

    @contextlib.contextmanager
    def lock(self, batch_dir: Path, *, blocking: bool) -> Iterator[bool]:
        """Hold an exclusive ``flock`` on the batch folder itself.

        Locking the folder, not a lock file, means the lock leaves with the folder
        when it is purged or quarantined: a waiter then finds the batch gone.

        Args:
            batch_dir: The batch folder.
            blocking: Wait for another encoder to finish, or give up at once.

        Yields:
            True when held; False when the folder is gone or (non-blocking) busy.
        """
        try:
            fd = os.open(batch_dir, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # --- finished videos -----------------------------------------------------------

    def video_paths(self, device: str, batch: str, first_ms: int,
                    last_ms: int) -> tuple[Path, Path]:
        """The MP4 paths a batch's video may have: the layout's name, then the fallback.

        Args:
            device: Device id.
            batch: Batch name.
            first_ms: First ts_ms.
            last_ms: Last ts_ms.

        Returns:
            Both candidate paths.
        """
        folder = self.root / video_dir(device, first_ms)
        primary, alternate = video_stems(device, batch, first_ms, last_ms)
        return folder / f"{primary}.mp4", folder / f"{alternate}.mp4"

    @staticmethod
    def read_sidecar(mp4: Path) -> dict[str, Any] | None:
        """The video event stored beside an MP4, if readable.

        Args:
            mp4: The MP4 path (the sidecar is the same stem with ``.json``).

        Returns:
            The event object, or None.
        """
        try:
            obj = json.loads(mp4.with_suffix(".json").read_bytes())
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    def find_video(self, device: str, batch: str, first_ms: int,
                   last_ms: int) -> FoundVideo | None:
        """The finished video of a batch, when there is one.

        Args:
            device: Device id.
            batch: Batch name.
            first_ms: First ts_ms.
            last_ms: Last ts_ms.

        Returns:
            The video, or None.
        """
        for mp4 in self.video_paths(device, batch, first_ms, last_ms):
            event = self.read_sidecar(mp4)
            if event is not None and event.get("batch") == batch and mp4.is_file():
                return FoundVideo(mp4=mp4, event=event)
        return None

    def free_video_path(self, device: str, batch: str, first_ms: int,
                        last_ms: int) -> Path:
        """Where a new video of this batch goes.

        The layout's name, unless another batch's video already holds it.

        Args:
            device: Device id.
            batch: Batch name.
            first_ms: First ts_ms.
            last_ms: Last ts_ms.

        Returns:
            The MP4 path.
        """
        primary, alternate = self.video_paths(device, batch, first_ms, last_ms)
        owner = self.read_sidecar(primary)
        taken = primary.exists() or (owner is not None and owner.get("batch") != batch)
        return alternate if taken else primary

    @staticmethod
    def partial_path(final: Path) -> Path:
        """The temporary name a file is written under, beside its final name.

        Args:
            final: The final path.

        Returns:
            A hidden name in the same folder (retention and scans skip dot files).
        """
        return final.with_name(f".{final.name}{PARTIAL}")

    @staticmethod
    def remove_partials(final: Path) -> None:
        """Remove leftovers of an interrupted write of ``final`` and its companions.

        Args:
            final: The MP4 path.
        """
        if not final.parent.is_dir():
            return
        stem = final.stem
        for p in final.parent.glob(f".{stem}.*{PARTIAL}"):
            with contextlib.suppress(OSError):
                p.unlink()

    # --- leaving the batches folder --------------------------------------------------

    def purge(self, batch_dir: Path) -> None:
        """Remove a batch whose video is durable.

        One rename takes the whole folder out of ``batches/`` (so neither the ingestor
        nor another encoder ever sees a half-deleted batch); the deletion happens in
        the encoder's trash, which :meth:`prepare` empties after a crash.

        Args:
            batch_dir: The batch folder.

        Raises:
            FileNotFoundError: The batch was already gone.
        """
        make_dirs(self.trash)
        dest = self.trash / f"{batch_dir.parent.name}--{batch_dir.name}--{uuid.uuid4().hex}"
        try:
            batch_dir.rename(dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Trash on another file system: delete in place, frames first and the
            # manifest last, so a crash leaves a sealed (smaller) batch whose video
            # exists, which the next run purges.
            for f in sorted((batch_dir / "frames").glob("*")):
                f.unlink()
            (batch_dir / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(batch_dir)
            fsync_dir(batch_dir.parent)
            return
        fsync_dir(batch_dir.parent)
        fsync_dir(self.trash)
        shutil.rmtree(dest, ignore_errors=True)

    def quarantine(self, batch_dir: Path, reason: dict[str, Any]) -> Path:
        """Move a batch that cannot become a video to ``quarantine/<id>/<batch>``.

        ``reason.json`` is written inside the batch first, so the quarantined folder
        always says why it is there.

        Args:
            batch_dir: The batch folder.
            reason: JSON-serialisable explanation.

        Returns:
            The quarantined folder.
        """
        atomic_write(batch_dir / REASON, json.dumps(reason, indent=2, sort_keys=True).encode())
        dest_parent = self.quarantine_root / batch_dir.parent.name
        make_dirs(dest_parent)
        dest = dest_parent / batch_dir.name
        n = 1
        while dest.exists():
            n += 1
            dest = dest_parent / f"{batch_dir.name}-{n}"
        batch_dir.rename(dest)
        fsync_dir(batch_dir.parent)
        fsync_dir(dest_parent)
        return dest

    # --- attempts, across crashes ------------------------------------------------------

    def _attempts_file(self, device: str, batch: str) -> Path:
        return self.attempts_dir / f"{device}--{batch}"

    def add_attempt(self, device: str, batch: str) -> int:
        """Count one more try of a batch, durably, before the try starts.

        A batch that kills the process (a decoder crash) is then recognised after
        ``max_attempts`` restarts instead of crashing the encoder forever.

        Args:
            device: Device id.
            batch: Batch name.

        Returns:
            The number of tries including this one.
        """
        path = self._attempts_file(device, batch)
        try:
            count = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            count = 0
        count += 1
        make_dirs(self.attempts_dir)
        atomic_write(path, str(count).encode())
        return count

    def clear_attempts(self, device: str, batch: str) -> None:
        """Forget the tries of a batch that is done (encoded or quarantined).

        Args:
            device: Device id.
            batch: Batch name.
        """
        self._attempts_file(device, batch).unlink(missing_ok=True)

    # --- videos purged but not yet announced ---------------------------------------------

    def _unannounced_file(self, device: str, batch: str) -> Path:
        return self.unannounced_dir / f"{device}--{batch}.json"

    def note_unpublished(self, device: str, batch: str, mp4: Path) -> None:
        """Remember, durably, that a video's event is still to be published.

        Args:
            device: Device id.
            batch: Batch name.
            mp4: The video.
        """
        make_dirs(self.unannounced_dir)
        record = {"device": device, "batch": batch,
                  "video": mp4.relative_to(self.root).as_posix()}
        atomic_write(self._unannounced_file(device, batch), json.dumps(record).encode())

    def clear_unpublished(self, device: str, batch: str) -> None:
        """Forget the note once the broker acknowledged the event.

        Args:
            device: Device id.
            batch: Batch name.
        """
        self._unannounced_file(device, batch).unlink(missing_ok=True)

    def unpublished(self) -> list[tuple[str, str, Path]]:
        """Videos whose event a previous run may not have published.

        Returns:
            ``(device, batch, mp4 path)`` for every valid note.
        """
        out: list[tuple[str, str, Path]] = []
        if not self.unannounced_dir.is_dir():
            return out
        for note in sorted(self.unannounced_dir.glob("*.json")):
            try:
                rec = json.loads(note.read_bytes())
                device, batch, video = rec["device"], rec["batch"], rec["video"]
            except (OSError, ValueError, KeyError, TypeError):
                note.unlink(missing_ok=True)
                continue
            if not (isinstance(device, str) and DEVICE_ID_RE.fullmatch(device)
                    and isinstance(batch, str) and BATCH_NAME_RE.fullmatch(batch)
                    and isinstance(video, str) and video.startswith(f"videos/{device}/")
                    and ".." not in video):
                note.unlink(missing_ok=True)
                continue
            out.append((device, batch, self.root / video))
        return out
