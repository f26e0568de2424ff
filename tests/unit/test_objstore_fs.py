"""Key validation and the filesystem backend (real files, no server)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import CatalogSettings, ObjectStoreSettings, S3Settings
from objstore import FilesystemStore, IntegrityError, InvalidKeyError, NotFoundError
from objstore.base import validate_key
from objstore.lifecycle import apply_pack_lifecycle


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", ".hidden", "a/.tmp",
                                 "a b", "a\x00b", "é", "x" * 1025, "a/" * 10 + "",
                                 "trailing/"])
def test_bad_keys_rejected(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def test_non_string_key_rejected() -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(123)  # type: ignore[arg-type]


def test_good_keys() -> None:
    for key in ["packs/cam01/cam01-20261124T101500Z-0001.tar", "a", "v/x_y-z.mp4", "a=b+c"]:
        assert validate_key(key) == key


def test_fs_put_get_range_list_delete(tmp_path: Path) -> None:
    s = FilesystemStore(tmp_path / "objects")
    s.check()
    data = bytes(range(256)) * 100
    info = s.put_bytes("packs/cam01/b1.tar", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    p = tmp_path / "objects" / "packs" / "cam01" / "b1.tar"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o750
    assert s.get_bytes("packs/cam01/b1.tar", sha256=info.sha256) == data
    assert s.get_range("packs/cam01/b1.tar", 10, 5) == data[10:15]
    assert [o.key for o in s.list("packs/")] == ["packs/cam01/b1.tar"]
    assert s.url("packs/cam01/b1.tar") == str(p)
    s.delete("packs/cam01/b1.tar")
    s.delete("packs/cam01/b1.tar")  # idempotent
    assert not s.exists("packs/cam01/b1.tar")
    with pytest.raises(NotFoundError):
        s.get_bytes("packs/cam01/b1.tar")
    assert not list(p.parent.iterdir())  # no temporary left behind


def test_fs_integrity(tmp_path: Path) -> None:
    s = FilesystemStore(tmp_path)
    with pytest.raises(IntegrityError):
        s.put_bytes("a", b"data", sha256="0" * 64)
    s.put_bytes("a", b"data")
    (tmp_path / "a").write_bytes(b"dada")
    with pytest.raises(IntegrityError):
        s.get_bytes("a", sha256=hashlib.sha256(b"data").hexdigest())


def test_fs_symlink_escape_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    s = FilesystemStore(root)
    with pytest.raises(Exception, match="outside the root"):
        s.put_bytes("link/escaped", b"x")
    assert not (tmp_path / "escaped").exists()


def test_fs_sweep_lifecycle(tmp_path: Path) -> None:
    s = FilesystemStore(tmp_path)
    s.put_bytes("packs/old.tar", b"x")
    s.put_bytes("videos/keep.mp4", b"x")
    res = apply_pack_lifecycle(s, "packs/", 1, now_ms=2**50)
    assert res.deleted == ["packs/old.tar"] and s.exists("videos/keep.mp4")


def test_settings_sections() -> None:
    assert ObjectStoreSettings().backend == "filesystem"
    with pytest.raises(ValidationError, match=r"s3\.bucket"):
        ObjectStoreSettings(backend="s3")
    with pytest.raises(ValidationError):
        ObjectStoreSettings(backend="s3", s3=S3Settings(bucket="Bad_Bucket"))
    with pytest.raises(ValidationError, match="together"):
        S3Settings(bucket="b", access_key_id="x")
    with pytest.raises(ValidationError):
        S3Settings(bucket="b", endpoint_url="ftp://x")
    with pytest.raises(ValidationError):
        S3Settings(bucket="b", unknown=1)  # type: ignore[call-arg]
    s = S3Settings(bucket="bkt", access_key_id="AK", secret_access_key="topsecret")
    assert "topsecret" not in repr(s) and "topsecret" not in str(s.model_dump())
    with pytest.raises(ValidationError, match="dsn"):
        CatalogSettings(backend="postgres")
    c = CatalogSettings(backend="postgres", dsn="host=/x password=hunter2")
    assert "hunter2" not in repr(c)
