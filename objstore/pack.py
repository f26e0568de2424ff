"""The pack: one sealed batch as one uncompressed POSIX (ustar) tar. Pure, no store I/O.

Members, in this order: ``manifest.json`` (the batch's manifest, byte for byte), then
every frame as ``frames/<name>.jpg`` in manifest (= video) order. Each member is a
512-byte ustar header followed by its data padded to 512 bytes, so a reader that has
the manifest can compute where every frame's bytes start (:func:`layout_index`) and
fetch one frame with one ranged GET. ``tar -tf`` lists a pack and ``tar -xf`` unpacks
it into the same ``manifest.json`` + ``frames/`` layout as a batch folder.

Headers are deterministic (mode 0640, uid/gid 0, no user names, a fixed mtime): the
same batch always gives the same bytes and therefore the same SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from objstore.errors import IntegrityError

MANIFEST_NAME = "manifest.json"
FRAMES_DIR = "frames"
BLOCK = 512
RECORD = BLOCK * 20  # tarfile.RECORDSIZE: the archive is padded to a multiple of it
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,89}")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class PackError(IntegrityError):
    """A pack that does not match its manifest, or is not a pack at all."""


@dataclass(frozen=True, slots=True)
class PackMember:
    """Where one member's bytes are inside the pack."""

    name: str
    """Member path: ``manifest.json`` or ``frames/<name>.jpg``."""
    offset: int
    """Offset of the first data byte (after its header)."""
    size: int

    @property
    def range_header(self) -> str:
        """The HTTP ``Range`` value of this member's bytes."""
        return f"bytes={self.offset}-{self.offset + self.size - 1}"


@dataclass(frozen=True, slots=True)
class PackIndex:
    """The members of a pack with their data offsets; total size and SHA-256."""

    members: tuple[PackMember, ...]
    size: int
    sha256: str

    def member(self, name: str) -> PackMember:
        """The member called ``name``.

        Raises:
            KeyError: If there is none.
        """
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (``[[name, offset, size], ...]``)."""
        return {"size": self.size, "sha256": self.sha256,
                "members": [[m.name, m.offset, m.size] for m in self.members]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PackIndex:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(PackMember(str(n), int(o), int(s)) for n, o, s in obj["members"]),
                   int(obj["size"]), str(obj["sha256"]))


def frame_member_name(name: str) -> str:
    """``frames/<name>.jpg`` for a frame name (with or without ``.jpg``, or ``frames/``).

    Raises:
        PackError: If the name is not a plain file name.
    """
    base = name.removeprefix(f"{FRAMES_DIR}/")
    if not base.endswith(".jpg"):
        base += ".jpg"
    if not _NAME_RE.fullmatch(base):
        raise PackError(f"invalid frame name {name[:100]!r}")
    return f"{FRAMES_DIR}/{base}"


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def layout_index(manifest_size: int, frames: Iterable[tuple[str, int]],
                 sha256: str = "") -> PackIndex:
    """The offsets a pack of these sizes has (without reading it).

    Args:
        manifest_size: Length of ``manifest.json`` (the first header's size field).
        frames: ``(name, bytes)`` per frame in order (the manifest's ``file``/``bytes``).
        sha256: Pack digest to carry along, if known.

    Returns:
        The index; ``size`` includes the end-of-archive blocks and record padding.
    """
    members = [PackMember(MANIFEST_NAME, BLOCK, manifest_size)]
    pos = BLOCK + _padded(manifest_size)
    for name, size in frames:
        members.append(PackMember(frame_member_name(name), pos + BLOCK, size))
        pos += BLOCK + _padded(size)
    pos += 2 * BLOCK
    return PackIndex(tuple(members), -(-pos // RECORD) * RECORD, sha256)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o640
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def write_pack(out: BinaryIO, manifest: bytes, frames: Iterable[tuple[str, bytes]], *,
               mtime: int = 0) -> PackIndex:
    """Write a pack to ``out`` (any writable binary file object, need not seek).

    Args:
        out: Destination.
        manifest: The ``manifest.json`` bytes, stored unchanged.
        frames: ``(name, jpeg bytes)`` in video order; ``name`` as in the manifest's
            ``file`` (``frames/<name>.jpg``) or just the file name.
        mtime: The mtime of every member (seconds), e.g. ``sealed_ms // 1000``.

    Returns:
        The index: each member's data offset and size, the pack's size and SHA-256.

    Raises:
        PackError: On an invalid frame name.
    """
    # The bytes TarFile(format=USTAR, encoding="utf-8").addfile would write, without
    # its 16 KiB copy loop: each header, the data as one write, the padding; then the
    # two end blocks and the padding to a whole record (tarfile.RECORDSIZE).
    digest = hashlib.sha256()
    pos = 0
    members: list[PackMember] = []

    def emit(b: bytes) -> None:
        nonlocal pos
        out.write(b)
        digest.update(b)
        pos += len(b)

    for name, data in [(MANIFEST_NAME, manifest), *frames]:
        member = MANIFEST_NAME if name == MANIFEST_NAME else frame_member_name(name)
        emit(_info(member, len(data), mtime).tobuf(tarfile.USTAR_FORMAT, "utf-8",
                                                   "surrogateescape"))
        members.append(PackMember(member, pos, len(data)))
        emit(data)
        if len(data) % BLOCK:
            emit(bytes(BLOCK - len(data) % BLOCK))
    emit(bytes(2 * BLOCK))
    if pos % RECORD:
        emit(bytes(RECORD - pos % RECORD))
    return PackIndex(tuple(members), pos, digest.hexdigest())


def pack_bytes(manifest: bytes, frames: Iterable[tuple[str, bytes]], *,
               mtime: int = 0) -> tuple[bytes, PackIndex]:
    """:func:`write_pack` into memory.

    Returns:
        (pack bytes, index).
    """
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    index = write_pack(buf, manifest, frames, mtime=mtime)
    return buf.getvalue(), index


@dataclass(frozen=True, slots=True)
class PackFrame:
    """One frame read from a pack, checked against its manifest entry."""

    index: int
    entry: dict[str, Any]
    data: bytes


@dataclass(slots=True)
class PackReader:
    """Reads a pack from a stream: the manifest first, then verified frames.

    Usage::

        reader = PackReader(stream)
        manifest = reader.manifest
        for frame in reader.frames(): ...
    """

    stream: BinaryIO
    verify_crc: bool = True
    _tar: tarfile.TarFile | None = None
    _manifest: dict[str, Any] | None = None
    manifest_bytes: bytes = b""

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            try:
                self._tar = tarfile.open(fileobj=self.stream, mode="r|")  # noqa: SIM115
            except tarfile.TarError as e:
                raise PackError(f"not a tar archive: {e}") from e
        tar: tarfile.TarFile = self._tar
        return tar

    def _next(self) -> tarfile.TarInfo | None:
        try:
            return self._open().next()
        except tarfile.TarError as e:
            raise PackError(f"corrupt tar: {e}") from e

    def _read(self, ti: tarfile.TarInfo) -> bytes:
        if not ti.isreg():
            raise PackError(f"member {ti.name!r} is not a regular file")
        f = self._open().extractfile(ti)
        if f is None:  # pragma: no cover - regular files always have data
            raise PackError(f"member {ti.name!r} has no data")
        data = f.read()
        if len(data) != ti.size:
            raise PackError(f"member {ti.name!r} truncated")
        return data

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json`` (read from the stream on first use).

        Raises:
            PackError: If the first member is not a valid manifest.
        """
        if self._manifest is None:
            ti = self._next()
            if ti is None or ti.name != MANIFEST_NAME:
                raise PackError(f"first member must be {MANIFEST_NAME}")
            if ti.size > MAX_MANIFEST_BYTES:
                raise PackError("manifest.json too large")
            self.manifest_bytes = self._read(ti)
            try:
                man = json.loads(self.manifest_bytes)
            except (ValueError, UnicodeDecodeError) as e:
                raise PackError(f"manifest.json is not JSON: {e}") from e
            if not isinstance(man, dict) or not isinstance(man.get("frames"), list):
                raise PackError("manifest.json has no frames list")
            self._manifest = man
        return self._manifest

    def frames(self) -> Iterator[PackFrame]:
        """Each frame in order, its name, size and CRC32 checked against the manifest.

        Raises:
            PackError: On a missing, extra, renamed, resized or corrupted frame.
        """
        entries = self.manifest["frames"]
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise PackError(f"manifest frame {i} is not an object")
            ti = self._next()
            if ti is None:
                raise PackError(f"pack ends before frame {i} of {len(entries)}")
            want = frame_member_name(str(entry.get("file", "")))
            if ti.name != want:
                raise PackError(f"frame {i}: member {ti.name!r}, manifest says {want!r}")
            if ti.size != entry.get("bytes"):
                raise PackError(f"frame {i}: {ti.size} bytes, manifest says {entry.get('bytes')}")
            data = self._read(ti)
            if self.verify_crc and zlib.crc32(data) != entry.get("crc32"):
                raise PackError(f"frame {i} ({ti.name}): CRC32 mismatch")
            yield PackFrame(i, entry, data)
        extra = self._next()
        if extra is not None:
            raise PackError(f"unexpected member after the last frame: {extra.name!r}")


def read_pack(stream: BinaryIO, *, verify_crc: bool = True) -> tuple[dict[str, Any],
                                                                     list[PackFrame]]:
    """Read a whole pack (manifest + verified frames) from ``stream``.

    Returns:
        (manifest, frames).
    """
    reader = PackReader(stream, verify_crc)
    return reader.manifest, list(reader.frames())


def index_from_manifest(manifest: bytes, sha256: str = "") -> PackIndex:
    """The pack's index computed from its ``manifest.json`` bytes alone.

    A reader fetches the manifest (its size is in the first 512-byte header, bytes
    124-135, octal), then reads any frame with one ranged GET.

    Returns:
        The index.

    Raises:
        PackError: If the manifest is not usable.
    """
    try:
        man = json.loads(manifest)
        frames = [(str(f["file"]), int(f["bytes"])) for f in man["frames"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PackError(f"bad manifest: {e}") from e
    return layout_index(len(manifest), frames, sha256)


def manifest_size_from_header(header: bytes) -> int:
    """The size of ``manifest.json`` from the pack's first 512 bytes.

    Raises:
        PackError: If the header is not the manifest's.
    """
    try:
        ti = tarfile.TarInfo.frombuf(header[:BLOCK], "utf-8", "strict")
    except tarfile.TarError as e:
        raise PackError(f"bad first header: {e}") from e
    if ti.name != MANIFEST_NAME:
        raise PackError(f"first member must be {MANIFEST_NAME}, not {ti.name!r}")
    return ti.size
