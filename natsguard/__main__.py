"""``python -m natsguard``: per-device budgets and client ids on the NATS engine.

Every ``broker.nats.guard.interval_s`` it asks every cluster node for its connections
(over the NATS protocol, as user ``guard`` of the system account) and closes a device
connection that is over its budget (``broker.device_*``, the same as the Mosquitto guard
plugin's) or that uses another client id than its own account name. Settings: the
broker's (``--config FILE`` or ``$CAM_CONFIG``, ``broker.engine = "nats"``), section
``[nats.guard]``. ``make up`` runs it with the nodes. docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog
from prometheus_client import disable_created_metrics

from broker.accounts import NATS_GUARD_USER, AccountStore, service_role
from broker.cli import add_global_options, load_broker_settings
from broker.layout import Layout
from config.logging import configure_logging
from config.settings import BrokerSettings
from natsguard.meter import Budget
from natsguard.service import Guard


def node_urls(settings: BrokerSettings) -> list[str]:
    """``guard.servers``, else every node's loopback client port."""
    n = settings.nats
    if n.guard.servers:
        return list(n.guard.servers)
    return [f"nats://127.0.0.1:{n.port_base + 10 * i}" for i in range(n.nodes)]


def budget_of(settings: BrokerSettings) -> Budget:
    """The per-device allowance: the broker's ``device_*`` settings."""
    return Budget(msgs_per_s=settings.device_msgs_per_s,
                  burst_msgs=float(settings.device_burst_msgs),
                  bytes_per_s=float(settings.device_bytes_per_s),
                  burst_bytes=float(settings.device_burst_bytes),
                  max_debt_s=settings.nats.guard.max_debt_s)


def main(argv: list[str] | None = None) -> int:
    """Run the guard until SIGTERM or SIGINT.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        0 after a stop, 2 for bad settings or a missing password file.
    """
    p = argparse.ArgumentParser(prog="python -m natsguard",
                                description=(__doc__ or "").replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_global_options(p)
    args = p.parse_args(argv)
    settings = load_broker_settings(args)
    if settings is None:
        return 2
    if settings.engine != "nats":
        print('error: the guard runs on broker.engine = "nats" only (Mosquitto has the '
              "guard plugin)", file=sys.stderr)
        return 2
    g = settings.nats.guard
    pw_file = g.password_file or Layout(settings.data_dir.resolve()).service_password_file(
        NATS_GUARD_USER)
    try:
        password = pw_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        print(f"error: nats.guard.password_file: {exc} (camstack init writes it)",
              file=sys.stderr)
        return 2
    configure_logging(service="natsguard")
    # One series per counter: no `_created` twin of every `_total`.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    layout = Layout(settings.data_dir.resolve())
    # Bans are written where every node's accounts file is (camstack init made it).
    store = AccountStore(layout.broker_dir, settings.topic_prefix) if g.ban_max_devices else None
    guard = Guard(g, budget_of(settings), servers=node_urls(settings),
                  nodes=settings.nats.nodes, user=NATS_GUARD_USER, password=password,
                  is_service=lambda name: service_role(name) is not None, store=store)
    port = guard.start_metrics()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        structlog.get_logger("natsguard").info(
            "guard_started", servers=guard.servers, metrics_port=port,
            interval_s=g.interval_s, device_msgs_per_s=settings.device_msgs_per_s,
            device_bytes_per_s=settings.device_bytes_per_s,
            bans_file=str(store.nats_bans) if store else None, banned=len(guard.bans))
        await guard.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
