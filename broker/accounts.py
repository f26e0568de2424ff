"""Device and service accounts: Mosquitto password file plus ACL file.

Why files and SIGHUP rather than the dynamic-security plugin: in Mosquitto 2.0.x
dynamic-security roles cannot expand ``%u``, so every device would need a role of its
own, and every change would need an admin account on the network. The ``acl_file``
``pattern`` lines bind a device to ``cam/<its username>/…`` in three readable lines,
the files are easy to audit and back up, and ``SIGHUP`` reloads them without
disconnecting anyone; on reload Mosquitto also disconnects clients whose account is
gone, so a revoked device is cut off at once (tested).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import secrets
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from broker.errors import AccountError
from contract.ids import DEVICE_ID_RE
from contract.topics import device_acl_patterns, role_acl_lines

SERVICES: dict[str, str] = {
    "ingestor": "reads every device's frames, announces batches",
    "encoder": "reads batch events, publishes videos",
    "operator": "watches everything, sends commands, publishes alerts",
}
"""Service roles and why each exists.

A service account is named after its role, or ``<role>-<suffix>`` for more workers of
the same role (``encoder-2``) or more people (``operator-alice``): the broker forces the
client id to the username (``use_username_as_clientid``), so two processes need two
accounts. These names are reserved: no device may use them.
"""


def service_role(name: str) -> str | None:
    """The role a service account name belongs to, or None for a device name.

    Args:
        name: Account name.

    Returns:
        ``ingestor``, ``encoder``, ``operator`` or None.
    """
    for role in SERVICES:
        if name == role or name.startswith(role + "-"):
            return role
    return None

NATS_GUARD_USER = "guard"
"""The NATS engine's guard (natsguard/) logs in as this user of NATS's system account.
Its password is ``data/secrets/guard.pass``; its bcrypt hash is kept apart from the
device and service accounts (``nats-system-users.json``), so it never becomes a
Mosquitto account. NATS user names are unique across accounts: no device may use it."""

Kind = Literal["device", "service"]
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes for $7$ hashes


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Hash like ``mosquitto_passwd`` (``$7$``: PBKDF2-HMAC-SHA512).

    Args:
        password: Clear text.
        salt: 12 random bytes unless given (tests).

    Returns:
        The ``$7$…`` string for the password file.
    """
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


NATS_BCRYPT_COST = 10
"""bcrypt cost of the NATS engine's hash of a password someone chose (~0.1 s of CPU at
every NATS login)."""

GENERATED_BCRYPT_COST = 4
"""bcrypt cost (bcrypt's least) of a generated password's hash: 192 random bits cannot
be guessed, so a slow hash adds nothing but CPU, at every NATS login (a fleet reconnecting
after a node restart) and at every ``add`` (0.17 s each at cost 10: 200 devices took 35 s)."""


def nats_hash(password: str, *, cost: int = NATS_BCRYPT_COST) -> str:
    """A bcrypt hash (``$2b$``) for the NATS engine, which accepts them in ``password``.

    Args:
        password: Clear text (at most 72 bytes count; generated ones have 32).
        cost: bcrypt cost (4..31).

    Returns:
        The hash.
    """
    import bcrypt  # noqa: PLC0415  (only account changes pay the import)

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def new_password() -> str:
    """A strong random password (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


@dataclass
class Account:
    """One broker account."""

    name: str
    kind: Kind
    pw_hash: str
    created: str
    revoked: str | None = None
    nats_hash: str | None = None
    """bcrypt hash of the same password for the NATS engine (None: created before it)."""

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked is None


def render_acl(accounts: list[Account], prefix: str) -> str:
    """The ACL file for the given accounts.

    Args:
        accounts: All accounts (revoked ones are left out).
        prefix: Topic prefix, ``cam`` by default.

    Returns:
        The file text.
    """
    lines = [
        "# Rendered by camstack (broker/accounts.py). Do not edit: run `python -m broker`.",
        "# Devices: pattern lines bind every account to topics named after its username.",
        *device_acl_patterns(prefix),
        "",
    ]
    rights = role_acl_lines(prefix)
    for acc in sorted(accounts, key=lambda a: a.name):
        role = service_role(acc.name)
        if acc.active and acc.kind == "service" and role is not None:
            lines += [f"user {acc.name}", *(r.format(name=acc.name) for r in rights[role]), ""]
    return "\n".join(lines)


class AccountStore:
    """Accounts kept under ``<broker dir>``: ``accounts.json``, ``passwd``, ``acl``.

    ``accounts.json`` is the source of truth (including revocations, for audit);
    ``passwd`` and ``acl`` are rendered from it on every change, atomically.
    """

    def __init__(self, broker_dir: Path, prefix: str = "cam") -> None:
        self.dir = broker_dir
        self.prefix = prefix
        self.registry = broker_dir / "accounts.json"
        self.passwd = broker_dir / "passwd"
        self.acl = broker_dir / "acl"
        self.nats_accounts = broker_dir / "nats-accounts.conf"
        self.nats_system_users = broker_dir / "nats-system-users.json"
        self.nats_bans = broker_dir / "nats-bans.json"
        self.pid_file = broker_dir / "mosquitto.pid"

    @contextlib.contextmanager
    def _locked(self, *, force: bool = False) -> Iterator[dict[str, Account]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".accounts.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            accounts = self._read()
            before = json.dumps({k: asdict(v) for k, v in accounts.items()}, sort_keys=True)
            yield accounts
            after = json.dumps({k: asdict(v) for k, v in accounts.items()}, sort_keys=True)
            if (force or after != before or not self.passwd.exists() or not self.acl.exists()
                    or not self.nats_accounts.exists()):
                self._write(accounts)

    def _read(self) -> dict[str, Account]:
        if not self.registry.exists():
            return {}
        raw = json.loads(self.registry.read_text(encoding="utf-8"))
        return {name: Account(**fields) for name, fields in raw.items()}

    def _write(self, accounts: dict[str, Account]) -> None:
        from broker.natscluster import render_accounts  # noqa: PLC0415  (a cycle)
        from broker.pki import share_with_broker  # noqa: PLC0415  (avoid a cycle at import)

        active = sorted((a for a in accounts.values() if a.active), key=lambda a: a.name)
        files = {
            self.registry: json.dumps({k: asdict(v) for k, v in sorted(accounts.items())},
                                      indent=2) + "\n",
            self.passwd: "".join(f"{a.name}:{a.pw_hash}\n" for a in active),
            self.acl: render_acl(list(accounts.values()), self.prefix),
            # The NATS engine's users and rights (broker/natscluster.py), from the same
            # accounts; accounts without a bcrypt hash are left out there.
            # A ban whose end passed is dropped by whoever renders next, so bans left by
            # a guard that is gone do not outlive their end (natsguard/bans.py).
            self.nats_accounts: render_accounts(
                list(accounts.values()), self.prefix, system_users=self.system_users(),
                banned={u for u, until in self.bans().items() if until > time.time()})[0],
        }
        for path, text in files.items():
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            share_with_broker(tmp, 0o640)
            tmp.replace(path)

    def list(self, *, include_revoked: bool = False) -> list[Account]:
        """Accounts, sorted by name.

        Args:
            include_revoked: Also list revoked accounts.

        Returns:
            The accounts.
        """
        with self._locked() as accounts:
            return sorted((a for a in accounts.values() if include_revoked or a.active),
                          key=lambda a: a.name)

    def add(self, name: str, kind: Kind, password: str | None = None) -> str:
        """Create an account (or re-enable a revoked one with a new password).

        Args:
            name: Device id or service name.
            kind: ``device`` or ``service``.
            password: Clear text; a strong random one when None.

        Returns:
            The clear-text password (shown once, never stored).

        Raises:
            AccountError: Bad or reserved id, or an active account of that name exists.
        """
        if not DEVICE_ID_RE.fullmatch(name):
            raise AccountError(f"invalid id {name!r}: must match {DEVICE_ID_RE.pattern}")
        if kind == "device" and (service_role(name) is not None or name == NATS_GUARD_USER):
            raise AccountError(f"{name!r} is reserved for service accounts")
        if kind == "service" and service_role(name) is None:
            raise AccountError(
                f"service account {name!r} must be a role or <role>-<suffix>; "
                f"roles: {', '.join(SERVICES)}"
            )
        cost = NATS_BCRYPT_COST if password else GENERATED_BCRYPT_COST
        password = password or new_password()
        hashed, bcrypted = hash_password(password), nats_hash(password, cost=cost)
        with self._locked() as accounts:
            old = accounts.get(name)
            if old is not None and old.active:
                raise AccountError(f"{kind} {name!r} already exists; revoke it first")
            accounts[name] = Account(
                name=name, kind=kind, pw_hash=hashed,
                created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                nats_hash=bcrypted,
            )
        return password

    def revoke(self, name: str) -> None:
        """Revoke an account: it can no longer connect, and is cut off at reload.

        Args:
            name: The account.

        Raises:
            AccountError: When no active account has that name.
        """
        with self._locked() as accounts:
            acc = accounts.get(name)
            if acc is None or not acc.active:
                raise AccountError(f"no active account {name!r}")
            acc.revoked = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def system_users(self) -> dict[str, str]:
        """Users of the NATS system account: name -> bcrypt hash (empty when none)."""
        if not self.nats_system_users.exists():
            return {}
        raw = json.loads(self.nats_system_users.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in raw.items()}

    def set_system_user(self, name: str, password: str) -> None:
        """Create or replace a user of the NATS system account, then re-render.

        Args:
            name: User name (:data:`NATS_GUARD_USER`).
            password: Clear text; only its bcrypt hash is kept.
        """
        hashed = nats_hash(password)
        with self._locked(force=True):
            users = {**self.system_users(), name: hashed}
            tmp = self.nats_system_users.with_name(self.nats_system_users.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(users, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.nats_system_users)

    def bans(self) -> dict[str, float]:
        """Devices the NATS guard bans: name -> end, seconds since the epoch (empty: none).

        An unreadable file counts as no bans: a ban must never lock a device out for good.
        """
        try:
            raw = json.loads(self.nats_bans.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(k): float(v) for k, v in raw.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
                and math.isfinite(v)}  # json reads Infinity: never a ban for good

    def set_bans(self, bans: Mapping[str, float]) -> None:
        """Replace the NATS guard's bans (name -> end), then re-render the accounts file.

        The running nodes still need a reload (the guard sends ``$SYS.REQ.SERVER.<id>.
        RELOAD``). Mosquitto's files are rendered again unchanged (bans are NATS only).
        """
        with self._locked(force=True):
            tmp = self.nats_bans.with_name(self.nats_bans.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(dict(bans), indent=2, sort_keys=True) + "\n")
            tmp.replace(self.nats_bans)

    def ensure_rendered(self) -> None:
        """Write ``passwd`` and ``acl`` if missing (a fresh install has no accounts yet)."""
        with self._locked():
            pass

    def reload_broker(self, pid_files: Sequence[Path] | None = None) -> bool:
        """Send SIGHUP to the running broker so it re-reads its accounts.

        Args:
            pid_files: Every process to signal (one per NATS node,
                broker/cluster.py ``broker_pid_files``); default: Mosquitto's pid file.

        Returns:
            True when at least one running broker process was signalled, False when
            none is running here.
        """
        signalled = False
        for pid_file in pid_files if pid_files is not None else [self.pid_file]:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue
            signalled = True
        return signalled
