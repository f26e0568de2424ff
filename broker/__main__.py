"""``python -m broker``: PKI, accounts, config rendering and the local broker.

Examples:
    python -m broker init                      # CA, server cert, service accounts, config
    python -m broker device add cam01 --json   # new device, prints credentials
    python -m broker device list
    python -m broker device revoke cam01
    python -m broker run                       # foreground Mosquitto on ./data

The whole stack's tools (demo, simulate, status, service-config) are ``camstack``'s.
"""

from __future__ import annotations

import argparse
import sys

from broker.cli import add_commands, add_global_options, load_broker_settings, run_command
from broker.errors import BrokerToolError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    p = argparse.ArgumentParser(prog="python -m broker",
                                description=(__doc__ or "").replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_global_options(p)
    add_commands(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    settings = load_broker_settings(args)
    if settings is None:
        return 2
    try:
        return run_command(args, settings)
    except BrokerToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
