"""Settings: strict sections, bounds, cross-field rules, TOML + environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, IngestorSettings, load_settings
from config.settings import BrokerSettings, EncoderSettings


def test_defaults_are_valid() -> None:
    s = IngestorSettings()
    assert s.mqtt.port == 8883
    assert s.ingest.frames_per_video == 300
    assert s.ingest.max_frame_bytes == 4 * 1024 * 1024
    assert s.ingest.partial_timeout_s == 60.0
    assert EncoderSettings().share_group == "encoders"


def test_toml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[mqtt]\nhost = "file-host"\nport = 1884\n[ingest]\nframes_per_video = 10\n')
    monkeypatch.setenv("CAM_MQTT__HOST", "env-host")
    s = load_settings(IngestorSettings, f)
    assert s.mqtt.host == "env-host"  # environment wins
    assert s.mqtt.port == 1884  # file value kept beside it
    assert s.ingest.frames_per_video == 10


def test_every_bad_field_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        "[mqtt]\nport = 70000\ntopic_prefix = \"a/b\"\nbogus = 1\n"
        "[ingest]\nframes_per_video = 0\n[nosuch]\nx = 1\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(IngestorSettings, f)
    text = "\n".join(exc.value.problems)
    for loc in ("mqtt.port", "mqtt.topic_prefix", "mqtt.bogus", "ingest.frames_per_video",
                "nosuch"):
        assert loc in text, text


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="max_device_inflight_bytes"):
        load_settings(IngestorSettings, ingest={"max_device_inflight_bytes": 1024 * 1024 * 1024})
    with pytest.raises(ConfigError, match="reconnect_min_s"):
        load_settings(IngestorSettings, mqtt={"reconnect_min_s": 10, "reconnect_max_s": 1})
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        load_settings(IngestorSettings, mqtt={"tls": {"cert_file": "/x.crt"}})
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(BrokerSettings, tls_port=1883, local_port=1883)
    s3 = {"backend": "s3", "s3": {"bucket": "camstack"}}
    with pytest.raises(ConfigError, match=r"retention\.max_disk_percent does not apply"):
        load_settings(EncoderSettings, store=s3, retention={"max_disk_percent": 80})
    ok = load_settings(EncoderSettings, store=s3, retention={"max_age_days": 14})
    assert ok.retention.max_age_days == 14


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(IngestorSettings, tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(IngestorSettings, bad)


def test_password_file_wins(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = load_settings(IngestorSettings, mqtt={"password": "inline", "password_file": str(pw)})
    assert s.mqtt.resolved_password() == "s3cret"


def test_cli_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("tls_port = 0\nextra = 1\n")
    res = subprocess.run([sys.executable, "-m", "broker", "--config", str(f), "render"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert "tls_port" in res.stderr and "extra" in res.stderr


def test_to_toml_round_trips() -> None:
    import tomllib  # noqa: PLC0415

    from config.loader import to_toml  # noqa: PLC0415

    data = {"a": 1, "b": True, "c": "x\"y", "d": [1, 2], "t": {"u": 1.5, "n": {"m": "z"}},
            "e": {"only": {"deep": 2}}}
    assert tomllib.loads(to_toml(data)) == data
    assert "none" not in tomllib.loads(to_toml({"none": None, "k": 1}))
