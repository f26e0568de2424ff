"""Fixtures of the integration tests: cleanup, and a real SeaweedFS and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.servers import PostgresHandle, SeaweedHandle, start_postgres, start_seaweedfs
from catalog import SqlCatalog, open_catalog
from config.settings import CatalogSettings
from objstore import S3Store


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Things a test started (anything with ``close()``), closed last-first afterwards."""
    things: list[Any] = []
    yield things
    for t in reversed(things):
        t.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedHandle]:
    """One ``weed mini`` for the session (tests use their own bucket; do not stop it)."""
    h = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield h
    h.stop()


@pytest.fixture
def fresh_seaweedfs(tmp_path: Path) -> Iterator[SeaweedHandle]:
    """A private ``weed mini`` a test may SIGKILL and restart."""
    h = start_seaweedfs(tmp_path / "seaweedfs")
    yield h
    h.stop()


@pytest.fixture
def s3_store(seaweedfs: SeaweedHandle) -> Iterator[S3Store]:
    """An :class:`S3Store` on a new bucket of the session's SeaweedFS."""
    bucket = "t-" + secrets.token_hex(6)
    seaweedfs.create_bucket(bucket)
    store = S3Store(seaweedfs.s3_settings(bucket=bucket))
    store.check()
    yield store
    store.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresHandle]:
    """One PostgreSQL cluster for the session (tests use their own database)."""
    h = start_postgres()
    yield h
    h.close()


@pytest.fixture
def pg_settings(postgres: PostgresHandle) -> CatalogSettings:
    """``catalog`` settings on a new database of the session's PostgreSQL."""
    name = "t_" + secrets.token_hex(6)
    postgres.create_database(name)
    return postgres.catalog_settings(name)


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlCatalog]:
    """A migrated catalog on SQLite, then on PostgreSQL (tests run on both)."""
    if request.param == "sqlite":
        settings = CatalogSettings(path=tmp_path / "catalog.sqlite3")
    else:
        settings = request.getfixturevalue("pg_settings")
    cat = open_catalog(settings)
    yield cat
    cat.close()
