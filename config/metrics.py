"""One clear line, not a traceback, when a service's metrics port cannot be bound.

The services start their Prometheus endpoint with ``prometheus_client``; this layer
may not import it, so the guard wraps whatever call binds the port::

    with metrics_port_guard(settings.metrics):
        server, _ = start_http_server(settings.metrics.port, addr=settings.metrics.host, ...)

A port already taken (or an address this machine does not have) prints one line naming
the setting and exits 2, the exit code of every other configuration error.
"""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

from config.settings import MetricsSettings

EXIT_CONFIG = 2


def metrics_bind_message(settings: MetricsSettings, exc: OSError) -> str:
    """The one-line explanation of a failed bind of the metrics endpoint.

    Args:
        settings: The ``[metrics]`` section.
        exc: What the bind raised.

    Returns:
        The message.
    """
    where = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use by another process"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "is not an address of this machine"
    elif exc.errno == errno.EACCES:
        why = "needs privileges (ports below 1024)"
    else:
        why = f"cannot be bound ({exc.strerror or exc})"
    return (f"error: metrics.port {where} {why}; set metrics.port (or metrics.host) in the "
            "config file or CAM_METRICS__PORT, 0 picks a free port, metrics.enabled = false "
            "turns the endpoint off")


@contextlib.contextmanager
def metrics_port_guard(settings: MetricsSettings) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into one line on stderr and exit 2.

    Use it in the main thread (a ``SystemExit`` in another thread ends only that
    thread).

    Args:
        settings: The ``[metrics]`` section.

    Raises:
        SystemExit: With code 2, after printing the message.
    """
    try:
        yield
    except OSError as exc:
        print(metrics_bind_message(settings, exc), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
