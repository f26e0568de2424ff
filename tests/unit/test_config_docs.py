"""docs/configuration.md is generated from the models and must be current; examples load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from config.docs import PROCESSES, TARGET, render
from config.loader import load_settings
from config.settings import BrokerSettings, EncoderSettings, IngestorSettings, MonitorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def test_committed_reference_is_current() -> None:
    assert TARGET.exists(), "docs/configuration.md missing: python -m config.docs --write"
    assert TARGET.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `python -m config.docs --write` and commit it")


def _leaves(model: type[BaseModel], path: list[str]) -> list[list[str]]:
    out = []
    for name, info in model.model_fields.items():
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out += _leaves(tp, [*path, name])
        else:
            out.append([*path, name])
    return out


def test_every_setting_is_documented_with_its_environment_name() -> None:
    text = render()
    for model, _, _ in PROCESSES:
        for path in _leaves(model, []):
            assert f"`{'.'.join(path)}`" in text, path
            assert "`CAM_" + "__".join(p.upper() for p in path) + "`" in text, path


def test_service_specific_defaults_are_shown() -> None:
    text = render()
    # The ingestor's section defaults differ from the bare MqttSettings defaults.
    ingestor = text.split("## EncoderSettings")[0]
    assert '| `mqtt.username` | `CAM_MQTT__USERNAME` | string | `"ingestor"` |' in ingestor
    assert "| `metrics.port` | `CAM_METRICS__PORT` | integer | `9101` | ≥ 0, ≤ 65535 |" in ingestor
    assert "one of `debug`, `info`, `warning`, `error`" in text


@pytest.mark.parametrize(("name", "model"), [
    ("ingestor", IngestorSettings), ("encoder", EncoderSettings),
    ("monitor", MonitorSettings), ("broker", BrokerSettings)])
def test_examples_are_valid(name: str, model: type[BaseSettings],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAM_CONFIG", raising=False)
    settings = load_settings(model, EXAMPLES / f"{name}.toml")
    assert settings.model_dump() != model().model_dump()  # the example sets something
