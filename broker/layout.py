"""Where the local default keeps everything under one data folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.pki import PkiPaths


@dataclass(frozen=True)
class Layout:
    """Paths under the data folder (``./data`` by default).

    ``broker/`` holds Mosquitto's config, accounts and persistence; ``pki/`` the CA and
    server certificate; ``secrets/`` one password file per service account (mode 0600);
    ``storage/`` the frames, batches and videos.
    """

    data_dir: Path

    @property
    def broker_dir(self) -> Path:
        """Mosquitto config, accounts, pid and persistence."""
        return self.data_dir / "broker"

    @property
    def conf_file(self) -> Path:
        """Rendered mosquitto.conf."""
        return self.broker_dir / "mosquitto.conf"

    @property
    def persist_dir(self) -> Path:
        """Mosquitto's persistence database."""
        return self.broker_dir / "persist"

    @property
    def pki(self) -> PkiPaths:
        """CA and server certificate."""
        return PkiPaths(self.data_dir / "pki")

    @property
    def secrets_dir(self) -> Path:
        """Service account passwords."""
        return self.data_dir / "secrets"

    def service_password_file(self, name: str) -> Path:
        """Password file of a service account.

        Args:
            name: Service name.

        Returns:
            Its path.
        """
        return self.secrets_dir / f"{name}.pass"

    @property
    def storage_root(self) -> Path:
        """Default storage root of the ingestor and encoder."""
        return self.data_dir / "storage"
