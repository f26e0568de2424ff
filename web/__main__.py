"""``python -m web``: the web page (cameras, health, videos) until SIGTERM or SIGINT.

Settings: ``--config FILE`` or ``$CAM_CONFIG`` (a WebSettings TOML, e.g.
``data/config/web.toml`` as ``camstack init`` renders it).

Accounts of the page:
  python -m web user add NAME --role operator|viewer [--config FILE] [--password-stdin]
  python -m web user list [--config FILE]
  python -m web user remove NAME [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import sys
from pathlib import Path

from config.loader import load_or_exit, service_arguments
from config.logging import configure_logging
from config.settings import WebSettings
from web.users import ROLES, UsersError, UsersFile


def user_main(argv: list[str]) -> int:
    """``python -m web user ...``: add, list or remove accounts of the page.

    Returns:
        The exit code (2 on a bad name, role or password).
    """
    p = argparse.ArgumentParser(prog="python -m web user",
                                description="Accounts of the web page (data/web/users.json).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="WebSettings TOML (default: $CAM_CONFIG, else the defaults)")
    p.add_argument("--config", type=Path, metavar="FILE", default=None,
                   help="WebSettings TOML (default: $CAM_CONFIG, else the defaults)")
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", parents=[common],
                         help="create an account (prints a generated password)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of generating one")
    add.add_argument("--replace", action="store_true", help="reset an existing account")
    sub.add_parser("list", parents=[common], help="list the accounts")
    rm = sub.add_parser("remove", parents=[common], help="delete an account")
    rm.add_argument("name")
    args = p.parse_args(argv)
    settings = load_or_exit(WebSettings, args.config)
    users = UsersFile(settings.http.users_file)
    try:
        if args.cmd == "add":
            generated = not args.password_stdin
            if args.password_stdin:
                password = (sys.stdin.readline() if not sys.stdin.isatty()
                            else getpass.getpass("password: ")).rstrip("\r\n")
            else:
                password = secrets.token_urlsafe(15)
            users.add(args.name, args.role, password, replace=args.replace)
            print(f"user {args.name} ({args.role}) written to {users.path}")
            if generated:
                print(f"password (shown once): {password}")
        elif args.cmd == "list":
            for u in sorted(users.users().values(), key=lambda u: u.name):
                print(f"{u.name}\t{u.role}")
        elif not users.remove(args.name):
            print(f"no user {args.name}", file=sys.stderr)
            return 1
    except UsersError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve the page, or manage its accounts (``user ...``).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "user":
        return user_main(argv[1:])
    config = service_arguments("python -m web", __doc__ or "", argv)
    settings = load_or_exit(WebSettings, config)
    configure_logging(settings.log.level, settings.log.format,
                      service=settings.mqtt.username or "operator-web")
    from web.service import WebService  # noqa: PLC0415 - --help without the heavy imports

    return asyncio.run(WebService(settings).serve())


if __name__ == "__main__":
    sys.exit(main())
