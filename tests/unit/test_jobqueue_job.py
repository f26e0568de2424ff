"""EncodeJob and pack keys: round trips, and hostile job messages refused by reason."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobqueue.errors import MalformedJobError
from jobqueue.job import EncodeJob, pack_key, parse_pack_key

BATCH = "cam01-20261124T101500Z-0001"
KEY = f"packs/cam01/{BATCH}.tar"

ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
shas = st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(ids, names, shas)
def test_round_trip(device: str, batch: str, sha: str | None) -> None:
    job = EncodeJob.for_batch(device, batch, sha256=sha)
    assert EncodeJob.parse(job.to_json()) == job
    assert parse_pack_key(job.pack_key) == (device, batch)
    assert job.msg_id == f"{device}/{batch}"


def test_the_documented_shape() -> None:
    job = EncodeJob.parse(json.dumps({"v": 1, "device": "cam01", "batch": BATCH,
                                      "pack_key": KEY, "sha256": None}))
    assert job == EncodeJob("cam01", BATCH, KEY)
    assert pack_key("cam01", BATCH) == KEY
    assert parse_pack_key(f"p2/cam01/{BATCH}.tar", prefix="p2/") == ("cam01", BATCH)


def _msg(**fields: object) -> bytes:
    obj: dict[str, object] = {"v": 1, "device": "cam01", "batch": BATCH, "pack_key": KEY}
    obj.update(fields)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[" * 2000, "bad_json"),
    (b'{"v":1,"v":1}', "bad_json"),  # duplicate key
    (b"x" * 5000, "too_large"),
    (b"[]", "not_object"),
    (_msg(v=2), "bad_version"),
    (_msg(v=True), "bad_version"),
    (_msg(extra=1), "bad_field"),
    (_msg(device=5), "bad_field"),
    (_msg(device="cam 01"), "bad_device"),
    (_msg(device="../cam01"), "bad_device"),
    (_msg(batch=".."), "bad_batch"),
    (_msg(batch="a/b"), "bad_batch"),
    (_msg(batch="x" * 200), "bad_batch"),
    (_msg(pack_key="packs/cam02/" + BATCH + ".tar"), "bad_key"),
    (_msg(pack_key="packs/cam01/../" + BATCH + ".tar"), "bad_key"),
    (_msg(pack_key=KEY + "\n"), "bad_key"),
    (_msg(sha256="ABC"), "bad_sha256"),
    (_msg(sha256="A" * 64), "bad_sha256"),
])
def test_hostile_messages_are_refused_by_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedJobError) as e:
        EncodeJob.parse(raw)
    assert e.value.reason == reason


@pytest.mark.parametrize("key", [
    "packs/cam01/x.tar/..", "packs/../cam01/b.tar", "packs/cam01/b.tar.gz", "packs/cam01/.tar",
    "packs//b.tar", "/packs/cam01/b.tar", "other/cam01/b.tar", "packs/cam01/sub/b.tar",
    "packs/cam01/b c.tar", "packs/cam01/..tar", "packs/" + "c" * 33 + "/b.tar",
    "packs/cam01/" + "b" * 129 + ".tar", "packs/cam01/b.tar\x00", "x" * 600,
])
def test_keys_outside_the_pack_layout_are_refused(key: str) -> None:
    with pytest.raises(MalformedJobError):
        parse_pack_key(key)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(raw: bytes) -> None:
    with contextlib.suppress(MalformedJobError):
        EncodeJob.parse(raw)
