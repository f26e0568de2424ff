"""The metadata database: devices, batches and videos (SQLite or PostgreSQL)."""

from __future__ import annotations

from catalog.db import SqlCatalog, open_catalog
from catalog.errors import (
    CatalogConfigError,
    CatalogError,
    CatalogUnavailableError,
    InvalidValueError,
    MigrationError,
)
from catalog.models import BatchRow, BatchState, DeviceRow, SealedBatch, VideoRow

Catalog = SqlCatalog
"""The catalog interface (one implementation, two drivers)."""

__all__ = [
    "BatchRow",
    "BatchState",
    "Catalog",
    "CatalogConfigError",
    "CatalogError",
    "CatalogUnavailableError",
    "DeviceRow",
    "InvalidValueError",
    "MigrationError",
    "SealedBatch",
    "SqlCatalog",
    "VideoRow",
    "open_catalog",
]
