"""The S3 backend against a real SeaweedFS (``weed mini``): no mocks."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from camstack.brokerproc import free_port
from camstack.servers import SeaweedHandle
from config.settings import ObjectStoreSettings
from objstore import (
    EndpointUnreachableError,
    IntegrityError,
    NotFoundError,
    S3Store,
    StoreConfigError,
    UnavailableError,
    open_store,
)
from objstore.lifecycle import apply_pack_lifecycle
from objstore.pack import PackReader, index_from_manifest, manifest_size_from_header, write_pack

pytestmark = [pytest.mark.integration, pytest.mark.servers]


def test_put_get_range_head_list_delete_presign(s3_store: S3Store) -> None:
    data = bytes(range(256)) * 1000
    info = s3_store.put_bytes("packs/cam01/b1.tar", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_store.store_verifies_checksums is True  # SeaweedFS echoes ChecksumSHA256
    assert s3_store.get_bytes("packs/cam01/b1.tar", sha256=info.sha256) == data
    assert s3_store.get_range("packs/cam01/b1.tar", 1000, 24) == data[1000:1024]
    head = s3_store.head("packs/cam01/b1.tar")
    assert head is not None and head.size == len(data) and head.sha256 == info.sha256
    s3_store.put_bytes("videos/cam01/v.mp4", b"mp4")
    assert [o.key for o in s3_store.list("packs/")] == ["packs/cam01/b1.tar"]
    assert len(list(s3_store.list())) == 2
    with urllib.request.urlopen(s3_store.url("packs/cam01/b1.tar", expires_s=60)) as r:
        assert r.read() == data
    s3_store.delete("packs/cam01/b1.tar")
    s3_store.delete("packs/cam01/b1.tar")  # idempotent
    assert s3_store.head("packs/cam01/b1.tar") is None and not s3_store.exists("packs/cam01/b1.tar")
    with pytest.raises(NotFoundError):
        s3_store.get_bytes("packs/cam01/b1.tar")


def test_pack_upload_and_ranged_frame_read(s3_store: S3Store, tmp_path: Path) -> None:
    blobs = [bytes([i]) * (5000 + i) for i in range(30)]
    frames = [(f"frames/{i:013d}_00000001_{i:010d}.jpg", b) for i, b in enumerate(blobs)]
    man = json.dumps({"v": 1, "frames": [{"file": n, "bytes": len(b), "crc32": zlib.crc32(b)}
                                         for n, b in frames]}).encode()
    path = tmp_path / "p.tar"
    with path.open("wb") as out:
        index = write_pack(out, man, frames)
    with path.open("rb") as src:
        s3_store.put_stream("packs/p.tar", src, sha256=index.sha256, size=index.size)
    # A reader with nothing but the key: header → manifest → one frame by Range.
    size = manifest_size_from_header(s3_store.get_range("packs/p.tar", 0, 512))
    got_man = s3_store.get_range("packs/p.tar", 512, size)
    m = index_from_manifest(got_man).members[17]
    assert s3_store.get_range("packs/p.tar", m.offset, m.size) == blobs[16]
    with s3_store.open("packs/p.tar") as stream:
        assert [f.data for f in PackReader(stream).frames()] == blobs


def test_bad_checksum_refused_by_the_store(s3_store: S3Store) -> None:
    with pytest.raises(IntegrityError):
        s3_store.put_stream("x/bad", io.BytesIO(b"hello"), sha256="0" * 64, size=5)
    assert not s3_store.exists("x/bad")
    # The same through the raw client: SeaweedFS answers BadDigest.
    with pytest.raises(Exception, match="BadDigest"):
        s3_store.client.put_object(Bucket=s3_store.bucket, Key="x/raw", Body=b"hello",
                                   ChecksumSHA256=base64.b64encode(b"\0" * 32).decode())


def test_read_back_detects_changed_object(s3_store: S3Store) -> None:
    s3_store.put_bytes("x/a", b"original")
    s3_store.client.put_object(Bucket=s3_store.bucket, Key="x/a", Body=b"replaced")
    with pytest.raises(IntegrityError):
        s3_store.get_bytes("x/a", sha256=hashlib.sha256(b"original").hexdigest())


def test_wrong_credentials_named(seaweedfs: SeaweedHandle) -> None:
    store = S3Store(seaweedfs.s3_settings(secret_access_key="wrong-secret-value"))
    with pytest.raises(StoreConfigError, match="secret_access_key") as e:
        store.check()
    assert "wrong-secret-value" not in str(e.value) and "wrong-secret" not in repr(store)


def test_credentials_file(seaweedfs: SeaweedHandle, tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text(f"[default]\naws_access_key_id = {seaweedfs.access_key}\n"
                 f"aws_secret_access_key = {seaweedfs.secret_key}\n")
    store = S3Store(seaweedfs.s3_settings(access_key_id="", secret_access_key="",
                                          credentials_file=f))
    store.check()
    f.write_text("[default]\naws_access_key_id = AKNOPE\naws_secret_access_key = nope\n")
    with pytest.raises(StoreConfigError, match="credentials_file"):
        S3Store(seaweedfs.s3_settings(access_key_id="", secret_access_key="",
                                      credentials_file=f)).check()


def test_missing_bucket_named(seaweedfs: SeaweedHandle) -> None:
    with pytest.raises(StoreConfigError, match=r"store\.s3\.bucket"):
        open_store(ObjectStoreSettings(
            backend="s3", s3=seaweedfs.s3_settings(bucket="no-such-bucket-here")))


def test_unreachable_endpoint_named_and_fast() -> None:
    from config.settings import S3Settings  # noqa: PLC0415

    port = free_port()  # nothing listens there
    s = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", bucket="b", access_key_id="a",
                   secret_access_key="b", connect_timeout_s=1, read_timeout_s=2, max_attempts=2)
    t = time.monotonic()
    with pytest.raises(EndpointUnreachableError, match=r"store\.s3\.endpoint_url"):
        S3Store(s).check()
    assert time.monotonic() - t < 15


def test_sigkill_raises_unavailable_then_recovers(fresh_seaweedfs: SeaweedHandle) -> None:
    store = S3Store(fresh_seaweedfs.s3_settings(connect_timeout_s=1, read_timeout_s=3))
    store.check()
    store.put_bytes("packs/before", b"kept")
    fresh_seaweedfs.stop(kill=True)
    t = time.monotonic()
    with pytest.raises(UnavailableError):
        store.put_bytes("packs/during", b"x" * 100_000)
    with pytest.raises(UnavailableError):
        store.get_bytes("packs/before")
    assert time.monotonic() - t < 30  # bounded: timeouts and retries, no hang
    fresh_seaweedfs.start()
    store.put_bytes("packs/after", b"ok")
    assert store.get_bytes("packs/before") == b"kept"
    assert store.get_bytes("packs/after") == b"ok"
    assert not store.exists("packs/during")
    store.close()


def test_lifecycle_rule_accepted(s3_store: S3Store) -> None:
    res = apply_pack_lifecycle(s3_store, "packs/", 7)
    ours = [r for r in res.rules if r.get("ID") == "camstack-pack-expiry"]
    assert ours and ours[0]["Expiration"] == {"Days": 7}
    assert ours[0].get("Filter", {}).get("Prefix", ours[0].get("Prefix")) == "packs/"
    res = apply_pack_lifecycle(s3_store, "packs/", 3)  # replaces, does not duplicate
    ours = [r for r in res.rules if r.get("ID") == "camstack-pack-expiry"]
    assert len(ours) == 1 and ours[0]["Expiration"] == {"Days": 3}


def test_invalid_keys_never_reach_the_store(s3_store: S3Store) -> None:
    from objstore import InvalidKeyError  # noqa: PLC0415

    for key in ["../x", "a//b", "", "x" * 2000]:
        with pytest.raises(InvalidKeyError):
            s3_store.put_bytes(key, b"x")
