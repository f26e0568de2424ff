"""Accounts of the web page: a small JSON file of names, roles and scrypt hashes.

``python -m web user add NAME --role operator|viewer`` writes it; the service reads it
again whenever the file changes, so a removed account is locked out at its next request.
Passwords are hashed with scrypt (memory-hard: N=2^15, r=8, p=1, 32 MiB per hash).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["operator", "viewer"]
ROLES: tuple[Role, ...] = ("operator", "viewer")
USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SCRYPT_N_LOG2 = 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class UsersError(Exception):
    """The users file or a user operation is invalid."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None,
                  n_log2: int = SCRYPT_N_LOG2) -> str:
    """``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` of ``password``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**n_log2, r=SCRYPT_R,
                            p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n_log2}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant-time compare)."""
    try:
        kind, n_log2, r, p, salt_b64, hash_b64 = encoded.split("$")
        if kind != "scrypt" or not 10 <= int(n_log2) <= 20 or not 1 <= int(r) <= 32 \
                or not 1 <= int(p) <= 16:
            return False
        salt, want = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        got = hashlib.scrypt(password.encode("utf-8", "replace"), salt=salt, n=2 ** int(n_log2),
                             r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


_DUMMY_HASH = hash_password("not a password of anyone", salt=b"\0" * 16)


@dataclass(frozen=True)
class User:
    """One account."""

    name: str
    role: Role
    password_hash: str


def check_username(name: object) -> str:
    """The name when valid.

    Raises:
        UsersError: When it is not.
    """
    if not isinstance(name, str) or not USERNAME_RE.fullmatch(name):
        raise UsersError("a user name is 1-64 of letters, digits, '_', '.', '-'")
    return name


class UsersFile:
    """The users file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        """Use ``path`` (it may not exist yet)."""
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, User] = {}

    def _load(self) -> dict[str, User]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._users
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsersError(f"{self.path}: unreadable: {type(e).__name__}") from None
        users: dict[str, User] = {}
        items = obj.get("users") if isinstance(obj, dict) else None
        if not isinstance(items, dict):
            raise UsersError(f"{self.path}: no 'users' object")
        for name, entry in items.items():
            if (isinstance(name, str) and USERNAME_RE.fullmatch(name) and isinstance(entry, dict)
                    and entry.get("role") in ROLES and isinstance(entry.get("hash"), str)):
                users[name] = User(name, entry["role"], entry["hash"])
        self._stamp, self._users = stamp, users
        return users

    def users(self) -> dict[str, User]:
        """Every valid account by name."""
        return dict(self._load())

    def get(self, name: str) -> User | None:
        """One account, or None."""
        return self._load().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The account when name and password match, else None (same cost either way)."""
        user = self._load().get(name) if USERNAME_RE.fullmatch(name) else None
        if user is None or len(password) > MAX_PASSWORD:
            verify_password(password[:MAX_PASSWORD], _DUMMY_HASH)
            return None
        return user if verify_password(password, user.password_hash) else None

    def _write(self, users: dict[str, User]) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        data = {"version": 1, "users": {u.name: {"role": u.role, "hash": u.password_hash}
                                         for u in sorted(users.values(), key=lambda u: u.name)}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self._stamp = None

    def add(self, name: str, role: str, password: str, *, replace: bool = False) -> User:
        """Create (or with ``replace``, reset) an account.

        Raises:
            UsersError: On a bad name, role or password, or an existing account.
        """
        check_username(name)
        if role not in ROLES:
            raise UsersError(f"role must be one of {', '.join(ROLES)}")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise UsersError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        users = self._load()
        if name in users and not replace:
            raise UsersError(f"user {name} exists (use --replace to reset it)")
        user = User(name, role, hash_password(password))
        self._write({**users, name: user})
        return user

    def remove(self, name: str) -> bool:
        """Delete an account; whether it existed."""
        users = self._load()
        if name not in users:
            return False
        self._write({k: v for k, v in users.items() if k != name})
        return True


def load_or_create_secret(path: Path) -> bytes:
    """32 random bytes kept in ``path`` (created 0600 when missing)."""
    if not path.exists():
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsersError(f"{path}: not a hex key") from None
    if len(key) < 16:
        raise UsersError(f"{path}: key shorter than 16 bytes")
    return key
