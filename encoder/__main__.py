"""``python -m encoder``: turn sealed batches into H.264 MP4s, then purge their frames.

Runs until SIGTERM or SIGINT. Settings: ``--config FILE`` or ``$CAM_CONFIG`` (an
EncoderSettings TOML, e.g. ``data/config/encoder.toml``); docs/configuration.md.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import av.logging
import structlog
from prometheus_client import disable_created_metrics

from catalog import CatalogError
from config.loader import load_or_exit, service_arguments
from config.logging import configure_logging
from config.metrics import metrics_port_guard
from config.settings import EncoderSettings
from encoder.service import EncoderService
from jobqueue import JobQueueError
from objstore import ObjectStoreError

log = structlog.get_logger("encoder")


def main(argv: list[str] | None = None) -> int:
    """Run the encoder until SIGTERM or SIGINT.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    config = service_arguments("python -m encoder", __doc__ or "", argv)
    settings = load_or_exit(EncoderSettings, config)
    configure_logging(settings.log.level, settings.log.format,
                      service=settings.mqtt.username or "encoder")
    # FFmpeg's log callback into Python takes the GIL from every decoder and x264
    # thread (contention, and known deadlocks); our own events carry the reasons.
    av.logging.set_level(None)
    # One series per counter: no `_created` twin of every `_total` (timestamps nobody
    # graphs, doubling the series count).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service = EncoderService(settings)
    except (CatalogError, ObjectStoreError, JobQueueError, OSError, ValueError) as exc:
        # One line naming the setting (catalog.dsn, store.s3.bucket, signing_key_file,
        # jobqueue.servers).
        print(f"python -m encoder: {exc}", file=sys.stderr)
        return 2
    with metrics_port_guard(settings.metrics):
        service.serve_metrics()
    failed = threading.Event()

    def start() -> None:
        # Connecting retries until the broker answers; a signal must still stop us.
        try:
            service.start()
        except Exception as exc:
            log.exception("encoder_start_failed", error=str(exc))
            failed.set()
            stop.set()

    starter = threading.Thread(target=start, name="encoder-start", daemon=True)
    starter.start()
    stop.wait()
    service.stop_event.set()
    starter.join(timeout=30)
    service.stop()
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    raise SystemExit(main())
