"""``python -m ingestor``: run the ingestor until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from config.loader import load_or_exit
from config.logging import configure_logging
from config.settings import IngestorSettings
from ingestor.service import IngestorService


def main() -> int:
    """Load settings, run the service, exit 0 after a graceful stop.

    Returns:
        The exit code.
    """
    settings = load_or_exit(IngestorSettings)
    configure_logging(settings.log.level, settings.log.format, service="ingestor")
    service = IngestorService(settings)

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
