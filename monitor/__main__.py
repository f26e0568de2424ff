"""``python -m monitor``: evaluate the alert rules until SIGTERM or SIGINT.

Settings: ``--config FILE`` or ``$CAM_CONFIG`` (a MonitorSettings TOML, e.g.
``data/config/monitor.toml`` as ``camstack init`` renders it).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from prometheus_client import disable_created_metrics

from config.loader import load_or_exit, service_arguments
from config.logging import configure_logging
from config.settings import MonitorSettings
from monitor.service import Monitor


def main(argv: list[str] | None = None) -> int:
    """Load settings, run the monitor, exit 0 after a stop.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    config = service_arguments("python -m monitor", __doc__ or "", argv)
    settings = load_or_exit(MonitorSettings, config)
    configure_logging(settings.log.level, settings.log.format,
                      service=settings.mqtt.username or "operator-monitor")
    # One series per counter: no `_created` twin of every `_total`.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    mon = Monitor(settings)
    mon.start_metrics()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        mon.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return mon.run()


if __name__ == "__main__":
    sys.exit(main())
