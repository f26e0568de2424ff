"""A JetStream worker in its own process, for tests that SIGKILL it mid-job.

``python -m tests.support.jobworker SETTINGS_JSON OUT_FILE MODE``

* ``SETTINGS_JSON``: the ``JobQueueSettings`` as JSON;
* ``OUT_FILE``: one line per event, flushed and fsynced: ``started <msg_id>``,
  ``done <msg_id>`` — the positive signals the test waits for;
* ``MODE``: ``block`` (the handler announces the job, then blocks until the process is
  killed) or ``ok`` (the handler returns ``Outcome.OK`` at once).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from config.settings import JobQueueSettings
from jobqueue.job import EncodeJob
from jobqueue.worker import Outcome, run_worker_blocking


def main(argv: list[str]) -> int:
    settings = JobQueueSettings.model_validate_json(argv[0])
    out = Path(argv[1])
    mode = argv[2]
    lock = threading.Lock()

    def note(line: str) -> None:
        with lock, out.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def handle(job: EncodeJob) -> Outcome:
        note(f"started {job.msg_id}")
        if mode == "block":
            threading.Event().wait()  # until SIGKILL
        note(f"done {job.msg_id}")
        return Outcome.OK

    def quarantine(job: EncodeJob, deliveries: int) -> None:
        note(f"quarantined {job.msg_id} {deliveries}")

    stop = threading.Event()
    run_worker_blocking(settings, handle, quarantine, stop, name="worker-subprocess")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
