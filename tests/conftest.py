"""Shared fixtures: a real Mosquitto with the project's config (TLS, accounts, ACLs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from camstack.brokerproc import BrokerHandle, start_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """One broker for the session. Tests use their own device ids; do not stop it."""
    handle = start_broker(tmp_path_factory.mktemp("broker"))
    yield handle
    handle.close()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[BrokerHandle]:
    """A private broker a test may stop, kill and restart."""
    handle = start_broker(tmp_path / "broker")
    yield handle
    handle.close()
