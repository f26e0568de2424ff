"""The ingestor's upload child process (ingestor/uploadproc.py): real processes, real stores.

A pack built and uploaded by the child is byte-identical to the batch's source pack;
a child that dies is noticed, reported as a retryable failure, and replaced; a stop
interrupts a hanging upload; the child's errors come back with their kind.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import threading
import time
import zlib
from pathlib import Path

import pytest

from camstack.jpegs import make_jpeg
from config.settings import S3Settings
from ingestor.uploadproc import (
    UploadInterruptedError,
    UploadProcess,
    store_spec,
    upload_pack,
)
from objstore import FilesystemStore, IntegrityError, S3Store, UnavailableError
from objstore.batchpack import batch_source_sha256
from objstore.pack import read_pack

pytestmark = pytest.mark.integration


def make_batch(root: Path, name: str, n: int = 5) -> Path:
    """A sealed batch folder (manifest + frames) as the ingestor leaves it."""
    folder = root / name
    (folder / "frames").mkdir(parents=True)
    frames = []
    for i in range(n):
        data = make_jpeg(160, 120, i)
        fname = f"{1795515300000 + i * 500:013d}_0000cafe_{i:010d}.jpg"
        (folder / "frames" / fname).write_bytes(data)
        frames.append({"file": f"frames/{fname}", "boot_id": 0xCAFE, "frame_seq": i,
                       "capture_ms": 1795515300000 + i * 500, "clock_synced": True,
                       "ts_ms": 1795515300000 + i * 500, "bytes": len(data),
                       "crc32": zlib.crc32(data)})
    man = {"v": 1, "device": "cam01", "batch": name, "sealed_ms": 1795515600123,
           "frames": frames, "first_capture_ms": frames[0]["ts_ms"],
           "last_capture_ms": frames[-1]["ts_ms"]}
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


def test_upload_pack_in_memory_and_spilled_is_the_source_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemStore(tmp_path / "objects")
    folder = make_batch(tmp_path / "batches", "cam01-20261124T101500Z-0001")
    want = batch_source_sha256(folder)
    assert upload_pack(store, folder, "packs/cam01/a.tar", tmp_path / "spool") == want
    # Past the memory bound the pack spills to an unnamed file: same bytes, no leftovers.
    monkeypatch.setattr("ingestor.uploadproc.SPOOL_MEMORY_BYTES", 1024)
    assert upload_pack(store, folder, "packs/cam01/b.tar", tmp_path / "spool") == want
    assert list((tmp_path / "spool").iterdir()) == []
    for key in ("packs/cam01/a.tar", "packs/cam01/b.tar"):
        man, frames = read_pack(io.BytesIO(store.get_bytes(key, sha256=want[0])))
        assert len(frames) == 5 and man["batch"] == folder.name


def test_child_uploads_survives_a_kill_and_reports_errors(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    spec = store_spec(store)
    assert spec is not None
    restarts: list[int] = []
    proc = UploadProcess(spec, tmp_path / "spool", nice=5,
                         on_restart=lambda: restarts.append(1))
    stop = threading.Event()
    try:
        b1 = make_batch(tmp_path / "batches", "cam01-20261124T101500Z-0001")
        b2 = make_batch(tmp_path / "batches", "cam01-20261124T101500Z-0002", n=3)
        assert proc.upload(b1, "packs/cam01/1.tar", stop) == batch_source_sha256(b1)
        pid = proc.pid
        assert pid is not None
        with open(f"/proc/{pid}/stat") as f:  # the nice value is field 19
            assert int(f.read().rsplit(")", 1)[1].split()[16]) >= 5
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(UnavailableError, match="upload process gone"):
            proc.upload(b2, "packs/cam01/2.tar", stop)
        assert not store.exists("packs/cam01/2.tar")
        # The next attempt starts a new child (counted) and uploads.
        assert proc.upload(b2, "packs/cam01/2.tar", stop) == batch_source_sha256(b2)
        assert proc.pid != pid and restarts == [1]
        # The child's errors come back as what they were.
        with pytest.raises(OSError) as ei:
            proc.upload(tmp_path / "batches" / "missing", "packs/cam01/3.tar", stop)
        assert ei.value.errno == errno.ENOENT
        (b1 / "manifest.json").write_text("{not json")
        with pytest.raises(IntegrityError, match="bad manifest"):
            proc.upload(b1, "packs/cam01/4.tar", stop)
        assert proc.upload(b2, "packs/cam01/2.tar", stop) == batch_source_sha256(b2)
        assert restarts == [1]
    finally:
        proc.close()
    assert proc.pid is None


def test_s3_child_upload_is_verified_by_the_store(s3_store: S3Store, tmp_path: Path) -> None:
    spec = store_spec(s3_store)
    assert spec is not None
    proc = UploadProcess(spec, tmp_path / "spool")
    try:
        folder = make_batch(tmp_path / "batches", "cam01-20261124T101500Z-0007", n=20)
        sha, size = proc.upload(folder, "packs/cam01/x.tar", threading.Event())
        assert (sha, size) == batch_source_sha256(folder)
        info = s3_store.head("packs/cam01/x.tar")
        assert info is not None and info.size == size
        assert s3_store.store_verifies_checksums is None  # this process uploaded nothing
        _man, frames = read_pack(io.BytesIO(s3_store.get_bytes("packs/cam01/x.tar",
                                                                sha256=sha)))
        assert [f.entry["frame_seq"] for f in frames] == list(range(20))
    finally:
        proc.close()


def test_stop_interrupts_an_upload_that_hangs(tmp_path: Path) -> None:
    # An "S3 endpoint" that accepts connections and never answers.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    s3 = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", bucket="hang",
                    access_key_id="AKTEST", secret_access_key="x" * 20,
                    connect_timeout_s=1, read_timeout_s=60, max_attempts=1)
    proc = UploadProcess(store_spec(S3Store(s3)) or {}, tmp_path / "spool")
    stop = threading.Event()
    folder = make_batch(tmp_path / "batches", "cam01-20261124T101500Z-0009")
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(UploadInterruptedError):
            proc.upload(folder, "packs/cam01/h.tar", stop)
        assert time.monotonic() - t0 < 10
        assert proc.pid is None  # killed, not left behind
    finally:
        proc.close()
        for c in held:
            c.close()
        srv.close()
