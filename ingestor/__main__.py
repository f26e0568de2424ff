"""``python -m ingestor``: store every frame durably, seal batches, announce them.

Runs until SIGTERM or SIGINT. Settings: ``--config FILE`` or ``$CAM_CONFIG`` (an
IngestorSettings TOML, e.g. ``data/config/ingestor.toml``); docs/configuration.md.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from prometheus_client import disable_created_metrics

from catalog import CatalogError
from config.loader import load_or_exit, service_arguments
from config.logging import configure_logging
from config.settings import IngestorSettings
from ingestor.handoff import ACQUIRE_LEAD_MS
from ingestor.leases import LeaseRefused
from ingestor.service import IngestorService
from jobqueue import JobQueueError
from objstore import ObjectStoreError


def main(argv: list[str] | None = None) -> int:
    """Load settings, run the service, exit 0 after a graceful stop.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    config = service_arguments("python -m ingestor", __doc__ or "", argv)
    settings = load_or_exit(IngestorSettings, config)
    configure_logging(settings.log.level, settings.log.format, service="ingestor")
    handoff = settings.ingest.handoff
    if (handoff is not None and handoff.role == "acquire"
            and handoff.at_ms < time.time() * 1000 + ACQUIRE_LEAD_MS):
        # Subscribed after the fence, it would miss frames the releasing one skips.
        print(f"python -m ingestor: ingest.handoff.at_ms {handoff.at_ms} is less than "
              f"{ACQUIRE_LEAD_MS // 1000} s ahead: choose a later fence", file=sys.stderr)
        return 2
    # One series per counter: no companion *_created series (docs/operations.md).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        service = IngestorService(settings)
    except (CatalogError, ObjectStoreError, JobQueueError, LeaseRefused) as exc:
        # One line naming the setting (catalog.dsn, store.s3.bucket, jobqueue.servers),
        # exit 2.
        print(f"python -m ingestor: {exc}", file=sys.stderr)
        return 2

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
