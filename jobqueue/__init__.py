"""Encode jobs on a NATS JetStream work queue, and the AWS Lambda entry (issue 13).

Layer 2 (beside ``mqttclient``): imports only ``contract`` and ``config``.

* :mod:`jobqueue.job` — :class:`EncodeJob`, the batch reference every runner passes on;
* :mod:`jobqueue.queue` — stream/consumer set-up, :func:`publish_job`,
  :class:`JobPublisher` (blocking, for the ingestor);
* :mod:`jobqueue.worker` — :class:`JobWorker` (pull, heartbeat, ack/nak/term,
  quarantine);
* :mod:`jobqueue.lambda_handler` — SQS (S3 notifications or job messages) → encode,
  with partial batch failures;
* :mod:`jobqueue.backlog` and :mod:`jobqueue.metrics` — encode backlog visibility.
"""

from jobqueue.errors import JobQueueError, MalformedJobError
from jobqueue.job import EncodeJob, pack_key, parse_pack_key

__all__ = ["EncodeJob", "JobQueueError", "MalformedJobError", "pack_key", "parse_pack_key"]
