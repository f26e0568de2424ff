"""The exceptions of the catalog: one root."""

from __future__ import annotations


class CatalogError(Exception):
    """Root of every error raised by :mod:`catalog`."""


class CatalogConfigError(CatalogError):
    """The database is not usable as configured; ``setting`` names the setting to fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class CatalogUnavailableError(CatalogError):
    """The database cannot be reached or is busy: retry later."""


class MigrationError(CatalogError):
    """The migration files or the database's schema version are inconsistent."""


class InvalidValueError(CatalogError, ValueError):
    """A value refused before it reaches the database (wrong type, too long, bad id)."""
