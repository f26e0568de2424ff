"""The capture-time fence of a partition handoff (ingestor/handoff.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.settings import IngestSettings
from contract.layout import CAPTURE_MIN_MS
from ingestor.handoff import Release, keeps, trusted

AT = CAPTURE_MIN_MS + 10_000_000


@given(capture=st.integers(0, 2**64 - 1), synced=st.booleans())
def test_every_frame_goes_to_at_least_one_and_trusted_ones_to_exactly_one(
        capture: int, synced: bool) -> None:
    rel, acq = keeps("release", AT, capture, synced), keeps("acquire", AT, capture, synced)
    assert rel or acq  # never lost
    if trusted(capture, synced):
        assert rel != acq  # never twice
    else:
        assert rel and acq  # kept by both: a duplicate, not a loss


def test_the_fence_itself_belongs_to_the_acquiring_ingestor() -> None:
    assert keeps("acquire", AT, AT, True) and not keeps("release", AT, AT, True)
    assert keeps("release", AT, AT - 1, True) and not keeps("acquire", AT, AT - 1, True)
    with pytest.raises(ValueError):
        keeps("steal", AT, AT, True)


def test_release_waits_for_every_seen_device_to_cross_the_fence() -> None:
    r = Release(AT, release_after_s=60)
    assert not r.due(AT - 1)
    assert not r.due(AT)  # nobody seen yet: wait (at most release_after_s)
    r.frame("a", AT - 5, True)
    r.frame("b", AT - 3, True)
    r.frame("a", AT + 1, True)
    assert r.waiting == {"b"} and not r.due(AT + 2)
    r.frame("b", AT - 1, False)  # untrusted: does not cross
    assert not r.due(AT + 2)
    r.frame("b", AT + 2, True)
    assert r.due(AT + 3)
    r.frame("a", AT - 9, True)  # a late redelivery of a crossed device does not undo it
    assert r.due(AT + 3)


def test_release_gives_up_waiting_after_release_after_s() -> None:
    r = Release(AT, release_after_s=60)
    r.frame("quiet", AT - 5, True)
    assert not r.due(AT + 59_999)
    assert r.due(AT + 60_000)
    r.done = True
    assert not r.due(AT + 60_001)


def test_handoff_partitions_must_be_owned() -> None:
    ok = IngestSettings(partitions=[1, 2, 3], handoff={"role": "release", "partitions": [2],
                                                       "at_ms": AT})
    assert ok.handoff is not None and ok.handoff.partitions == [2]
    with pytest.raises(ValidationError):
        IngestSettings(partitions=[1], handoff={"role": "acquire", "partitions": [2],
                                                "at_ms": AT})
