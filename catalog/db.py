"""The catalog over SQLite (embedded default) or PostgreSQL: one class, two drivers.

Every write is one transaction and every state change is idempotent under
redelivery: rows are inserted with ``ON CONFLICT DO NOTHING`` and a state moves only
from the states listed in :data:`catalog.models.NEXT_FROM`, so repeating a call
changes nothing (the methods return whether something changed).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from catalog.errors import (
    CatalogConfigError,
    CatalogError,
    CatalogUnavailableError,
    InvalidValueError,
    MigrationError,
)
from catalog.migrate import SCHEMA_VERSION_DDL, Migration, load_migrations
from catalog.models import (
    NEXT_FROM,
    BatchRow,
    BatchState,
    DeviceRow,
    SealedBatch,
    VideoRow,
    check_ids,
    validated,
)
from config.settings import CatalogSettings

log = structlog.get_logger("catalog")

_PARAM_RE = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_BATCH_COLS = ("device, batch, state, attempts, frames, first_capture_ms, last_capture_ms, "
               "pack_key, pack_sha256, pack_bytes, created_ms, updated_ms, error")
_VIDEO_COLS = ("device, batch, location, thumbnail, frames, skipped, duration_s, bytes, codec, "
               "first_capture_ms, last_capture_ms, sha256, pack_sha256, signature, created_ms")
_VIDEO_SELECT = f"{_VIDEO_COLS}, deleted_ms"
MAX_LIST = 10_000


def now_ms() -> int:
    """Current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class Tx(Protocol):
    """One open transaction: run statements with ``:name`` parameters."""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run a statement; return the affected row count."""

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a query; return its rows as dicts."""


class Driver(Protocol):
    """What a database driver provides to :class:`SqlCatalog`."""

    name: str

    def transaction(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction (serialised against other writers)."""

    def lock_migrations(self, tx: Tx) -> None:
        """Serialise concurrent ``migrate`` calls inside ``tx``."""

    def close(self) -> None:
        """Close the connection."""


# -- SQLite ----------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self.conn.execute(sql, params or {}).rowcount

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params or {}).fetchall()]


class SqliteDriver:
    """SQLite in WAL mode, ``synchronous=FULL``, a busy timeout, one connection."""

    name = "sqlite"

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        """Open (create) the database file.

        Raises:
            CatalogConfigError: Naming ``catalog.path`` when it cannot be opened.
        """
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(path), timeout=busy_timeout_ms / 1000, isolation_level=None,
                check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._wal(busy_timeout_ms / 1000)
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.Error, OSError) as e:
            raise CatalogConfigError("catalog.path", f"cannot open {path}: {e}") from None
        if str(mode).lower() != "wal":
            log.warning("catalog_sqlite_not_wal", path=str(path), mode=mode)
        with contextlib.suppress(OSError):
            path.chmod(0o640)

    def _wal(self, patience_s: float) -> str:
        # Switching a new file to WAL needs it alone: when the ingestor and the encoder
        # open a fresh catalog at the same moment, one gets SQLITE_BUSY at once (that
        # pragma does not wait on the busy handler). Try again for the busy timeout.
        deadline = time.monotonic() + patience_s
        delay = 0.01
        while True:
            try:
                return str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise CatalogUnavailableError(f"sqlite: {e}") from None
            try:
                yield _SqliteTx(self._conn)
                self._conn.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):
                    raise CatalogUnavailableError(f"sqlite: {e}") from None
                if isinstance(e, sqlite3.IntegrityError):
                    raise InvalidValueError(f"sqlite constraint: {e}") from None
                if isinstance(e, sqlite3.Error):
                    raise CatalogError(f"sqlite: {e}") from None
                raise

    def lock_migrations(self, tx: Tx) -> None:
        """BEGIN IMMEDIATE already holds the write lock."""

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


# -- PostgreSQL ------------------------------------------------------------------------


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        self.cur = cur

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        self.cur.execute(_PARAM_RE.sub(r"%(\1)s", sql).encode(), params or {})
        return self.cur.rowcount

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.cur.execute(_PARAM_RE.sub(r"%(\1)s", sql).encode(), params or {})
        return list(self.cur.fetchall())


class PostgresDriver:
    """PostgreSQL through psycopg 3: one connection, reconnected after a failure."""

    name = "postgres"

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0,
                 setting: str = "catalog.dsn") -> None:
        """Connect once now so that a wrong DSN fails at start.

        Raises:
            CatalogConfigError: Naming ``setting``; the password is never in the message.
        """
        self._dsn = dsn
        self._setting = setting
        self._timeout = max(1, round(connect_timeout_s))
        self._lock = threading.RLock()
        try:
            info = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise CatalogConfigError(setting, "not a valid PostgreSQL connection string") from None
        self._secret = str(info.get("password") or "")
        self._where = f"host={info.get('host', '')} port={info.get('port', '')} " \
                      f"dbname={info.get('dbname', '')}"
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        try:
            self._connect()
        except CatalogUnavailableError as e:
            raise CatalogConfigError(setting, str(e)) from None

    def __repr__(self) -> str:
        return f"PostgresDriver({self._where})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        try:
            self._conn = psycopg.connect(self._dsn, connect_timeout=self._timeout,
                                         autocommit=True, row_factory=dict_row)
        except psycopg.Error as e:
            msg = self._scrub(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
            raise CatalogUnavailableError(f"cannot connect to {self._where}: {msg}") from None
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction; reconnects first when the connection broke."""
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgTx(cur)
            except psycopg.errors.IntegrityError as e:
                raise InvalidValueError(f"postgres constraint: {self._scrub(str(e))}") from None
            except (psycopg.errors.DataError, psycopg.errors.ProgrammingError) as e:
                if isinstance(e, psycopg.errors.DataError):
                    raise InvalidValueError(f"postgres: {self._scrub(str(e))}") from None
                raise CatalogError(f"postgres: {self._scrub(str(e))}") from None
            except psycopg.Error as e:
                raise CatalogUnavailableError(f"postgres: {self._scrub(str(e))}") from None

    def lock_migrations(self, tx: Tx) -> None:
        """A transaction-scoped advisory lock."""
        tx.query("SELECT pg_advisory_xact_lock(7366016247)")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# -- the catalog -----------------------------------------------------------------------


def _clamp_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
        raise InvalidValueError(f"limit must be an integer 1..{MAX_LIST}")
    return limit


class SqlCatalog:
    """The catalog: devices, batches, videos. Thread-safe (one connection, a lock)."""

    def __init__(self, driver: Driver) -> None:
        """Use ``driver`` (see :func:`open_catalog`)."""
        self.driver = driver

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgres``."""
        return self.driver.name

    def __repr__(self) -> str:
        return f"SqlCatalog({self.driver!r})"

    # -- schema ----------------------------------------------------------------------

    def migrate(self, migrations: list[Migration] | None = None) -> list[int]:
        """Apply the migrations not yet applied, each in its own transaction.

        Safe to run twice and from several processes at once.

        Returns:
            The versions applied by this call (empty when the schema was current).

        Raises:
            MigrationError: If the database is newer than these migrations.
        """
        migrations = load_migrations() if migrations is None else migrations
        applied: list[int] = []
        for m in migrations:
            with self.driver.transaction() as tx:
                self.driver.lock_migrations(tx)
                tx.execute(SCHEMA_VERSION_DDL)
                done = {int(r["version"]) for r in tx.query("SELECT version FROM schema_version")}
                if done and max(done) > len(migrations):
                    raise MigrationError(
                        f"database schema version {max(done)} is newer than this code "
                        f"({len(migrations)})")
                if m.version in done:
                    continue
                for stmt in m.statements:
                    tx.execute(stmt)
                tx.execute("INSERT INTO schema_version (version, name, applied_ms) "
                           "VALUES (:v, :n, :t)", {"v": m.version, "n": m.name, "t": now_ms()})
                applied.append(m.version)
                log.info("catalog_migrated", backend=self.backend, version=m.version,
                         name=m.name)
        return applied

    def schema_version(self) -> int:
        """The highest applied migration (0 for an empty database)."""
        with self.driver.transaction() as tx:
            tx.execute(SCHEMA_VERSION_DDL)
            rows = tx.query("SELECT MAX(version) AS v FROM schema_version")
        v = rows[0]["v"] if rows else None
        return int(v) if v is not None else 0

    # -- writes ----------------------------------------------------------------------

    @staticmethod
    def _touch_device(tx: Tx, device: str, seen_ms: int) -> None:
        tx.execute(
            "INSERT INTO devices (id, first_seen_ms, last_seen_ms) VALUES (:d, :t, :t) "
            "ON CONFLICT (id) DO UPDATE SET "
            "first_seen_ms = CASE WHEN excluded.first_seen_ms < devices.first_seen_ms "
            "THEN excluded.first_seen_ms ELSE devices.first_seen_ms END, "
            "last_seen_ms = CASE WHEN excluded.last_seen_ms > devices.last_seen_ms "
            "THEN excluded.last_seen_ms ELSE devices.last_seen_ms END",
            {"d": device, "t": seen_ms})

    def touch_device(self, device: str, seen_ms: int | None = None) -> None:
        """Record that ``device`` was seen (first/last seen only widen).

        Raises:
            InvalidValueError: On a bad id or time.
        """
        row = validated(DeviceRow, {"id": device, "first_seen_ms": seen_ms or now_ms(),
                                    "last_seen_ms": seen_ms or now_ms()})
        with self.driver.transaction() as tx:
            self._touch_device(tx, row.id, row.last_seen_ms)

    def record_sealed(self, batch: SealedBatch, *, at_ms: int | None = None) -> bool:
        """Insert a sealed batch (state ``sealed``); a repeat is a no-op.

        Returns:
            Whether the row was created.
        """
        b = validated(SealedBatch, batch.model_dump()) if not isinstance(
            batch, SealedBatch) else batch
        t = at_ms if at_ms is not None else now_ms()
        with self.driver.transaction() as tx:
            self._touch_device(tx, b.device, max(b.last_capture_ms, 0) or t)
            n = tx.execute(
                f"INSERT INTO batches ({_BATCH_COLS}) VALUES (:device, :batch, 'sealed', 0, "
                ":frames, :first, :last, NULL, NULL, NULL, :t, :t, NULL) "
                "ON CONFLICT (device, batch) DO NOTHING",
                {"device": b.device, "batch": b.batch, "frames": b.frames,
                 "first": b.first_capture_ms, "last": b.last_capture_ms, "t": t})
        return n > 0

    def _move(self, device: str, batch: str, to: BatchState, sets: str = "",
              params: dict[str, Any] | None = None) -> bool:
        device, batch = check_ids(device, batch)
        allowed = sorted(s.value for s in NEXT_FROM[to])
        names = {f"s{i}": s for i, s in enumerate(allowed)}
        placeholders = ", ".join(f":{k}" for k in names)
        with self.driver.transaction() as tx:
            n = tx.execute(
                f"UPDATE batches SET state = :to, updated_ms = :t{sets} "
                f"WHERE device = :device AND batch = :batch AND state IN ({placeholders})",
                {"to": to.value, "t": now_ms(), "device": device, "batch": batch,
                 **names, **(params or {})})
        return n > 0

    def mark_uploaded(self, device: str, batch: str, *, pack_key: str, pack_sha256: str,
                      pack_bytes: int) -> bool:
        """``sealed`` → ``uploaded`` with the pack's key, SHA-256 and size.

        Returns:
            Whether the state changed (False on a repeat or a later state).

        Raises:
            InvalidValueError: On a bad value.
        """
        row = validated(BatchRow, {
            "device": device, "batch": batch, "frames": 1, "first_capture_ms": 0,
            "last_capture_ms": 0, "state": BatchState.UPLOADED, "attempts": 0, "pack_key": pack_key,
            "pack_sha256": pack_sha256, "pack_bytes": pack_bytes, "created_ms": 0,
            "updated_ms": 0})
        return self._move(device, batch, BatchState.UPLOADED,
                          ", pack_key = :pk, pack_sha256 = :ps, pack_bytes = :pb",
                          {"pk": row.pack_key, "ps": row.pack_sha256, "pb": row.pack_bytes})

    def start_encoding(self, device: str, batch: str) -> int | None:
        """Move to ``encoding`` and count one more attempt.

        A redelivered ready event is one more attempt, as a crash is (the encoder's
        ``max_attempts`` counts both).

        Returns:
            The attempts so far, or ``None`` when the batch is unknown or already past
            encoding (encoded, purged, quarantined).
        """
        if not self._move(device, batch, BatchState.ENCODING, ", attempts = attempts + 1"):
            return None
        b = self.get_batch(device, batch)
        return b.attempts if b is not None else None

    def quarantine(self, device: str, batch: str, error: str) -> bool:
        """Move to ``quarantined`` with the reason (not from encoded or purged).

        Returns:
            Whether the state changed.
        """
        if not isinstance(error, str):
            raise InvalidValueError("error must be a string")
        return self._move(device, batch, BatchState.QUARANTINED, ", error = :err",
                          {"err": error[:4000]})

    def mark_purged(self, device: str, batch: str) -> bool:
        """``encoded`` → ``purged`` (the pack or the local frames are gone).

        Returns:
            Whether the state changed.
        """
        return self._move(device, batch, BatchState.PURGED)

    def record_video(self, video: VideoRow) -> bool:
        """Insert the video row and move its batch to ``encoded``, in one transaction.

        A batch the catalog did not know yet is inserted as ``encoded``. Recording
        the same video twice leaves one row (the first).

        Returns:
            Whether the video row was created.

        Raises:
            InvalidValueError: On a bad value (``video`` must be a :class:`VideoRow`).
        """
        if not isinstance(video, VideoRow):
            raise InvalidValueError("record_video takes a VideoRow")
        v = video
        t = now_ms()
        params = v.model_dump(mode="python")
        with self.driver.transaction() as tx:
            self._touch_device(tx, v.device, v.last_capture_ms or t)
            tx.execute(
                f"INSERT INTO batches ({_BATCH_COLS}) VALUES (:device, :batch, 'encoded', 1, "
                ":frames, :first_capture_ms, :last_capture_ms, NULL, :pack_sha256, NULL, "
                ":t, :t, NULL) ON CONFLICT (device, batch) DO NOTHING",
                {**params, "frames": max(v.frames + v.skipped, 1), "t": t})
            n = tx.execute(
                f"INSERT INTO videos ({_VIDEO_COLS}) VALUES (:device, :batch, :location, "
                ":thumbnail, :frames, :skipped, :duration_s, :bytes, :codec, "
                ":first_capture_ms, :last_capture_ms, :sha256, :pack_sha256, :signature, "
                ":created_ms) ON CONFLICT DO NOTHING", params)
            tx.execute(
                "UPDATE batches SET state = 'encoded', updated_ms = :t, error = NULL "
                "WHERE device = :device AND batch = :batch "
                "AND state IN ('sealed', 'uploaded', 'encoding')",
                {"t": t, "device": v.device, "batch": v.batch})
        if n == 0:
            existing = self.get_video(v.device, v.batch)
            if existing is not None and existing.sha256 != v.sha256:
                log.warning("catalog_video_differs", device=v.device, batch=v.batch,
                            kept=existing.sha256, offered=v.sha256)
        return n > 0

    # -- reads -----------------------------------------------------------------------

    def get_batch(self, device: str, batch: str) -> BatchRow | None:
        """The batch row, or ``None``."""
        device, batch = check_ids(device, batch)
        with self.driver.transaction() as tx:
            rows = tx.query(f"SELECT {_BATCH_COLS} FROM batches "
                            "WHERE device = :d AND batch = :b", {"d": device, "b": batch})
        return BatchRow.model_validate(rows[0], strict=False) if rows else None

    def get_video(self, device: str, batch: str) -> VideoRow | None:
        """The video row of a batch, or ``None``."""
        device, batch = check_ids(device, batch)
        with self.driver.transaction() as tx:
            rows = tx.query(f"SELECT {_VIDEO_SELECT} FROM videos "
                            "WHERE device = :d AND batch = :b", {"d": device, "b": batch})
        return VideoRow.model_validate(rows[0], strict=False) if rows else None

    def video_by_location(self, location: str) -> VideoRow | None:
        """The video stored at ``location``, or ``None``."""
        if not isinstance(location, str) or len(location) > 1024:
            raise InvalidValueError("location must be a string of at most 1024 characters")
        with self.driver.transaction() as tx:
            rows = tx.query(f"SELECT {_VIDEO_SELECT} FROM videos WHERE location = :l",
                            {"l": location})
        return VideoRow.model_validate(rows[0], strict=False) if rows else None

    @staticmethod
    def _filters(device: str | None, since_ms: int | None) -> tuple[list[str], dict[str, Any]]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if device is not None:
            check_ids(device, "x")
            where.append("device = :device")
            params["device"] = device
        if since_ms is not None:
            if not isinstance(since_ms, int) or isinstance(since_ms, bool) or since_ms < 0:
                raise InvalidValueError("since_ms must be a non-negative integer")
            where.append("last_capture_ms >= :since")
            params["since"] = since_ms
        return where, params

    def list_batches(self, *, device: str | None = None, since_ms: int | None = None,
                     state: BatchState | str | None = None, limit: int = 1000) -> list[BatchRow]:
        """Batches in capture order, filtered by device, capture time and state.

        Args:
            device: Only this device.
            since_ms: Only batches whose last capture is at or after this time.
            state: Only batches in this state.
            limit: At most this many (1..10000).

        Returns:
            The rows.
        """
        where, params = self._filters(device, since_ms)
        if state is not None:
            try:
                params["state"] = BatchState(state).value
            except ValueError:
                raise InvalidValueError(f"unknown state {str(state)[:40]!r}") from None
            where.append("state = :state")
        params["limit"] = _clamp_limit(limit)
        sql = (f"SELECT {_BATCH_COLS} FROM batches"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY first_capture_ms, device, batch LIMIT :limit")
        with self.driver.transaction() as tx:
            rows = tx.query(sql, params)
        return [BatchRow.model_validate(r, strict=False) for r in rows]

    def list_videos(self, *, device: str | None = None, since_ms: int | None = None,
                    limit: int = 1000, include_deleted: bool = False) -> list[VideoRow]:
        """Videos in capture order, filtered by device and capture time.

        Args:
            device: Only this device.
            since_ms: Only videos whose last capture is at or after this time.
            limit: At most this many (1..10000).
            include_deleted: Also the videos retention deleted (``deleted_ms`` set).

        Returns:
            The rows.
        """
        where, params = self._filters(device, since_ms)
        if not include_deleted:
            where.append("deleted_ms IS NULL")
        params["limit"] = _clamp_limit(limit)
        sql = (f"SELECT {_VIDEO_SELECT} FROM videos"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY first_capture_ms, device, batch LIMIT :limit")
        with self.driver.transaction() as tx:
            rows = tx.query(sql, params)
        return [VideoRow.model_validate(r, strict=False) for r in rows]

    def videos_to_expire(self, before_ms: int, *, limit: int = 1000) -> list[VideoRow]:
        """Videos not yet deleted whose last frame was captured before ``before_ms``.

        Oldest first; what retention deletes on the object store (one indexed query,
        no listing of the bucket).

        Args:
            before_ms: The cutoff (Unix ms).
            limit: At most this many (1..10000).

        Returns:
            The rows.

        Raises:
            InvalidValueError: On a bad cutoff.
        """
        if not isinstance(before_ms, int) or isinstance(before_ms, bool):
            raise InvalidValueError("before_ms must be an integer")
        with self.driver.transaction() as tx:
            rows = tx.query(
                f"SELECT {_VIDEO_SELECT} FROM videos WHERE deleted_ms IS NULL "
                "AND last_capture_ms < :before ORDER BY last_capture_ms, device, batch "
                "LIMIT :limit", {"before": before_ms, "limit": _clamp_limit(limit)})
        return [VideoRow.model_validate(r, strict=False) for r in rows]

    def mark_video_deleted(self, device: str, batch: str, *, at_ms: int | None = None) -> bool:
        """Record that the video's objects are deleted (``deleted_ms``); a repeat is a no-op.

        Returns:
            Whether the row changed (False when unknown or already marked).
        """
        device, batch = check_ids(device, batch)
        t = at_ms if at_ms is not None else now_ms()
        with self.driver.transaction() as tx:
            n = tx.execute("UPDATE videos SET deleted_ms = :t WHERE device = :d "
                           "AND batch = :b AND deleted_ms IS NULL",
                           {"t": t, "d": device, "b": batch})
        return n > 0

    def list_devices(self) -> list[DeviceRow]:
        """Every device, by id."""
        with self.driver.transaction() as tx:
            rows = tx.query("SELECT id, first_seen_ms, last_seen_ms FROM devices ORDER BY id")
        return [DeviceRow.model_validate(r, strict=False) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        self.driver.close()


def open_catalog(settings: CatalogSettings, *, migrate: bool = True) -> SqlCatalog:
    """The catalog the settings describe, connected (and migrated) now.

    Args:
        settings: The ``catalog`` section.
        migrate: Apply pending migrations.

    Returns:
        The catalog.

    Raises:
        CatalogConfigError: Naming the setting at fault (``catalog.path``,
            ``catalog.dsn`` or ``catalog.dsn_file``).
    """
    driver: Driver
    if settings.backend == "postgres":
        setting = "catalog.dsn_file" if settings.dsn_file is not None else "catalog.dsn"
        try:
            dsn = settings.resolved_dsn()
        except OSError as e:
            raise CatalogConfigError(setting, f"cannot read: {type(e).__name__}") from None
        driver = PostgresDriver(dsn, settings.connect_timeout_s, setting)
    else:
        driver = SqliteDriver(settings.path, settings.busy_timeout_ms)
    cat = SqlCatalog(driver)
    if migrate:
        cat.migrate()
    log.info("catalog_ready", backend=driver.name, schema_version=cat.schema_version())
    return cat
