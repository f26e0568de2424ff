"""`camstack service-config --force` re-renders into existing files, keeping comments (tomlkit)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker.errors import BrokerToolError
from camstack.stack import merge_toml, write_documents

EXISTING = """\
# my monitor: do not lose this
interval_s = 30.0   # slower on purpose

[mqtt]
host = "old-host"  # the hub
port = 8883

[alerts]
# tuned after the storm
device_offline_s = 900.0
"""


def test_values_are_re_rendered_and_comments_and_extra_keys_kept(tmp_path: Path) -> None:
    path = tmp_path / "monitor.toml"
    path.write_text(EXISTING, encoding="utf-8")
    doc = {"mqtt": {"host": "127.0.0.1", "port": 1883, "tls": {"enabled": False}},
           "storage": {"root": tmp_path / "storage"}, "log": {"level": "info"}}
    assert write_documents({"monitor": doc}, tmp_path) == []  # kept without force
    assert path.read_text(encoding="utf-8") == EXISTING
    assert write_documents({"monitor": doc}, tmp_path, force=True) == [path]
    text = path.read_text(encoding="utf-8")
    for kept in ("# my monitor: do not lose this", "# slower on purpose", "# the hub",
                 "# tuned after the storm"):
        assert kept in text
    data = tomllib.loads(text)
    assert data["interval_s"] == 30.0 and data["alerts"] == {"device_offline_s": 900.0}
    assert data["mqtt"] == {"host": "127.0.0.1", "port": 1883, "tls": {"enabled": False}}
    assert data["storage"] == {"root": str(tmp_path / "storage")}
    # Rendering again changes nothing.
    assert merge_toml(text, doc) == text


def test_invalid_existing_file_is_one_clear_error() -> None:
    with pytest.raises(BrokerToolError, match="invalid TOML"):
        merge_toml("[mqtt\nhost=", {"mqtt": {"host": "x"}})
