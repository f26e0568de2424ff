"""The JetStream runner's pure parts: settings rules, thread split, outcome mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.settings import EncoderSettings, IngestorSettings
from encoder.jetstream import ACKED, job_outcome
from encoder.jobs import Outcome as BatchOutcome
from encoder.muxer import EncodeOptions
from jobqueue.job import Outcome

S3 = {"backend": "s3", "s3": {"bucket": "camstack"}}


@pytest.mark.parametrize("model", [IngestorSettings, EncoderSettings])
def test_jetstream_runner_needs_the_object_store(model: type) -> None:
    with pytest.raises(ValidationError, match=r'runner "jetstream" needs store\.backend'):
        model(runner="jetstream")
    s = model(runner="jetstream", store=S3)
    assert s.runner == "jetstream" and s.jobqueue.stream == "CAMSTACK_JOBS"
    assert model().runner == "mqtt"


def test_parallel_batches_is_bounded() -> None:
    assert EncoderSettings(work={"parallel_batches": 4}).work.parallel_batches == 4
    for bad in (0, 17):
        with pytest.raises(ValidationError, match="parallel_batches"):
            EncoderSettings(work={"parallel_batches": bad})


@given(parallel=st.integers(1, 16), cpus=st.integers(1, 128), threads=st.integers(0, 8),
       decode=st.integers(0, 8))
def test_parallel_encodes_share_the_cpus(parallel: int, cpus: int, threads: int,
                                         decode: int) -> None:
    opts = EncodeOptions(threads=threads, decode_threads=decode)
    got = opts.shared_by(parallel, cpus)
    if parallel == 1:
        assert got == opts
        return
    share = max(1, cpus // parallel)
    assert got.threads == (threads or share)
    assert got.decode_threads == (decode or share)
    # Left to FFmpeg, K encodes together never ask for more threads than CPUs (or K).
    if threads == 0:
        assert got.threads * parallel <= max(cpus, parallel)


def test_every_batch_outcome_maps_to_ack_or_redelivery() -> None:
    for outcome in BatchOutcome:
        expected = Outcome.OK if outcome in ACKED else Outcome.RETRY
        assert job_outcome(outcome) is expected
    # Finished for good: acked. Anything that may still succeed: delivered again.
    assert {o for o in BatchOutcome if job_outcome(o) is Outcome.OK} == {
        BatchOutcome.ENCODED, BatchOutcome.ALREADY_DONE, BatchOutcome.QUARANTINED,
        BatchOutcome.MISSING}
    assert job_outcome(BatchOutcome.STOPPED) is Outcome.RETRY
