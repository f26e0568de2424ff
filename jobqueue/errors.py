"""The one exception root of the job queue package."""

from __future__ import annotations


class JobQueueError(Exception):
    """Anything the job queue raises on purpose."""


class MalformedJobError(JobQueueError):
    """A job message (or an S3 key, or an SQS record) that cannot be acted upon."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        """Short machine-readable reason (a metric label)."""
