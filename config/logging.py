"""One structlog setup for every camstack process.

Events are snake_case names with key/values. Output is JSON when stderr is not a TTY
(containers, CI, log shippers) and coloured console lines otherwise. Standard-library
loggers (paho-mqtt) go through the same renderer; the encoder sets PyAV's own level.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    service: str | None = None,
) -> None:
    """Configure structlog and the standard library once for this process.

    Args:
        level: Minimum level.
        fmt: ``json``, ``console`` or ``auto`` (JSON unless stderr is a TTY).
        service: Bound as ``service`` on every event when given.
    """
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if json_out:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # paho logs every packet at DEBUG; keep it quiet unless asked for.
    logging.getLogger("paho").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    structlog.contextvars.clear_contextvars()
    if service is not None:
        structlog.contextvars.bind_contextvars(service=service)
