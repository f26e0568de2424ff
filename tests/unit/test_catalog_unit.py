"""Catalog pieces without a server: migration parsing, row validation, signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog.errors import InvalidValueError, MigrationError
from catalog.migrate import load_migrations, split_sql
from catalog.models import VideoRow, check_ids, validated
from catalog.signing import (
    load_or_create_key,
    load_public_key,
    public_key_pem,
    sign_video,
    verify_video,
)


def test_split_sql() -> None:
    text = ("-- comment; not a split\nCREATE TABLE a (x TEXT DEFAULT 'a;b''c');\n"
            "/* block; */ INSERT INTO a VALUES ('--x');\n\n;  \nSELECT 1")
    assert split_sql(text) == ["CREATE TABLE a (x TEXT DEFAULT 'a;b''c')",
                               "INSERT INTO a VALUES ('--x')", "SELECT 1"]
    with pytest.raises(MigrationError):
        split_sql("SELECT 'open")


def test_shipped_migrations_load() -> None:
    ms = load_migrations()
    assert [m.version for m in ms] == list(range(1, len(ms) + 1))
    assert any("CREATE TABLE videos" in s for s in ms[0].statements)


def test_migration_numbering_rules(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="gaps"):
        load_migrations(tmp_path)
    (tmp_path / "0003_c.sql").unlink()
    (tmp_path / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN"):
        load_migrations(tmp_path)


def _video(**kw: object) -> VideoRow:
    base: dict[str, object] = {
        "device": "cam01", "batch": "cam01-20261124T101500Z-0001",
        "location": "videos/cam01/2026-11-24/cam01_a_b.mp4", "thumbnail": None, "frames": 300,
        "skipped": 0, "duration_s": 10.0, "bytes": 1234, "codec": "h264",
        "first_capture_ms": 1795515300000, "last_capture_ms": 1795515599000,
        "sha256": "a" * 64, "pack_sha256": "b" * 64, "created_ms": 1795515600000}
    base.update(kw)
    return validated(VideoRow, base)


@pytest.mark.parametrize("field,value", [
    ("device", "x" * 33), ("device", "bad id"), ("batch", "b" * 129), ("frames", "300"),
    ("frames", True), ("frames", -1), ("duration_s", float("nan")), ("sha256", "A" * 64),
    ("location", "a\nb"), ("location", "x" * 5000), ("codec", "h264; DROP TABLE"),
    ("created_ms", 2**60), ("signature", "a b"),
])
def test_hostile_values_rejected(field: str, value: object) -> None:
    with pytest.raises(InvalidValueError, match=field):
        _video(**{field: value})


def test_check_ids() -> None:
    with pytest.raises(InvalidValueError, match="device"):
        check_ids(None, "b")
    assert check_ids("cam01", "b1") == ("cam01", "b1")


def test_key_file_mode_and_reuse(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "video-signing.key"
    k1 = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    k2 = load_or_create_key(path)
    assert public_key_pem(k1) == public_key_pem(k2)
    assert load_public_key(public_key_pem(k1)) is not None


def test_verify_intact_and_each_tamper_case(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    pub = key.public_key()
    mp4 = b"\x00\x00\x00\x18ftypisom" + b"x" * 1000
    import hashlib  # noqa: PLC0415

    row = _video(sha256=hashlib.sha256(mp4).hexdigest())
    row = row.model_copy(update={"signature": sign_video(row, key)})
    ok = verify_video(mp4, row, pub)
    assert ok.ok and ok.problems == []
    f = tmp_path / "v.mp4"
    f.write_bytes(mp4)
    assert verify_video(f, row, pub).ok

    # file altered
    r = verify_video(mp4 + b"!", row, pub)
    assert not r.ok and r.file_altered and r.signature_valid and not r.record_altered
    assert any(p.startswith("file altered") for p in r.problems)

    # record altered (a signed field changed in the database)
    r = verify_video(mp4, row.model_copy(update={"frames": 299}), pub)
    assert not r.ok and r.record_altered == ["frames: row 299, signed 300"]
    assert r.signature_valid and not r.file_altered

    # record and file replaced together: the signature still tells
    forged = row.model_copy(update={"sha256": "c" * 64})
    r = verify_video(b"other", forged, pub)
    assert r.record_altered and r.file_altered

    # signature invalid: damaged, or made with another key
    man, sig = str(row.signature).split(".")
    bad = row.model_copy(update={"signature": man + "." + ("A" if sig[0] != "A" else "B")
                                 + sig[1:]})
    r = verify_video(mp4, bad, pub)
    assert not r.signature_valid and not r.ok
    r = verify_video(mp4, row, Ed25519PrivateKey.generate().public_key())
    assert not r.signature_valid and any("another key" in p for p in r.problems)
    r = verify_video(mp4, row.model_copy(update={"signature": None}), pub)
    assert not r.signature_valid
