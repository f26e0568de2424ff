"""The storage layout's names and the capture-time plausibility rule (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contract.layout import (
    CAPTURE_MAX_AHEAD_MS,
    CAPTURE_MAX_MS,
    CAPTURE_MIN_MS,
    FRAME_NAME_RE,
    frame_file_name,
    frame_rel_path,
    frame_time,
    parse_frame_file_name,
)

NOW = 1_795_515_300_000
U64 = st.one_of(st.sampled_from([0, 1, 10**13 - 1, 10**13, 25 * 10**13, 2**63 - 1, 2**63,
                                 2**64 - 1, CAPTURE_MIN_MS - 1, CAPTURE_MIN_MS,
                                 NOW + CAPTURE_MAX_AHEAD_MS, NOW + CAPTURE_MAX_AHEAD_MS + 1]),
                st.integers(0, 2**64 - 1))


@given(capture=U64, synced=st.booleans(), seq=st.integers(0, 2**32 - 1),
       boot=st.integers(0, 2**32 - 1), arrival=st.integers(CAPTURE_MIN_MS, 10**13 - 10**12))
def test_any_header_time_files_a_frame_that_is_found_again(
        capture: int, synced: bool, seq: int, boot: int, arrival: int) -> None:
    # The security review: 2^64-1 with the clock flag crashed the writer (year > 9999),
    # and times from 10^13 on made names the startup scan never found again (orphans).
    t = frame_time(capture, synced, arrival)
    name = frame_file_name(t.ts_ms, boot, seq)
    assert FRAME_NAME_RE.fullmatch(name)
    assert parse_frame_file_name(name) == (t.ts_ms, boot, seq)
    assert frame_rel_path("cam01", t.ts_ms, boot, seq).endswith(name)
    assert 0 <= t.capture_ms <= CAPTURE_MAX_MS
    if t.clock_synced:
        assert synced and t.ts_ms == capture == t.capture_ms
    else:
        assert t.ts_ms == arrival


def test_plausibility_window_edges() -> None:
    assert frame_time(CAPTURE_MIN_MS, True, NOW).clock_synced
    assert not frame_time(CAPTURE_MIN_MS - 1, True, NOW).clock_synced
    assert frame_time(NOW + CAPTURE_MAX_AHEAD_MS, True, NOW).clock_synced
    assert not frame_time(NOW + CAPTURE_MAX_AHEAD_MS + 1, True, NOW).clock_synced
    assert not frame_time(NOW, False, NOW + 5).clock_synced
    assert frame_time(2**64 - 1, True, NOW) == (0, False, NOW)
    assert frame_time(12345, False, NOW) == (12345, False, NOW)


def test_names_are_matched_whole() -> None:
    good = frame_file_name(NOW, 1, 2)
    assert parse_frame_file_name(good) is not None
    assert parse_frame_file_name(good + "\n") is None
