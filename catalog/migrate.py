"""Numbered SQL migrations: ``catalog/migrations/NNNN_name.sql``, applied in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_sql(text: str) -> list[str]:
    """Split SQL text into statements at ``;`` outside quotes and comments.

    Handles ``'…'`` strings (with ``''``), ``"…"`` identifiers, ``-- …`` and ``/* … */``
    comments. Comments are dropped; empty statements are skipped.

    Args:
        text: The file's text.

    Returns:
        The statements, without the trailing ``;``.

    Raises:
        MigrationError: On an unterminated string or comment.
    """
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while True:
                j = text.find(c, j)
                if j < 0:
                    raise MigrationError("unterminated quoted text in SQL")
                if j + 1 < n and text[j + 1] == c:
                    j += 2
                    continue
                break
            cur.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise MigrationError("unterminated /* comment in SQL")
            cur.append(" ")
            i = j + 2
        elif c == ";":
            stmt = "".join(cur).strip()
            if stmt:
                out.append(stmt)
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    tail = "".join(cur).strip()
    if tail:
        out.append(tail)
    return out


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files of ``folder``, numbered 1, 2, 3 … without gaps.

    Returns:
        The migrations in version order.

    Raises:
        MigrationError: On a badly named file, a gap, a duplicate or an empty file.
    """
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix != ".sql":
            continue
        m = _FILE_RE.fullmatch(path.name)
        if not m:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version}")
        statements = tuple(split_sql(path.read_text(encoding="utf-8")))
        if not statements:
            raise MigrationError(f"{path.name} has no statement")
        found[version] = Migration(version, m.group(2), statements)
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migrations must be numbered 1..N without gaps, got {versions}")
    return [found[v] for v in versions]
