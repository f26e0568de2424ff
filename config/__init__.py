"""Settings models and process-wide setup shared by every camstack service."""

from config.loader import ConfigError, load_or_exit, load_settings
from config.logging import configure_logging
from config.settings import (
    BrokerSettings,
    EncoderSettings,
    EncodeSettings,
    IngestorSettings,
    IngestSettings,
    LogSettings,
    MetricsSettings,
    MqttSettings,
    RetentionSettings,
    StorageSettings,
    TlsSettings,
)

__all__ = [
    "BrokerSettings",
    "ConfigError",
    "EncodeSettings",
    "EncoderSettings",
    "IngestSettings",
    "IngestorSettings",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "RetentionSettings",
    "StorageSettings",
    "TlsSettings",
    "configure_logging",
    "load_or_exit",
    "load_settings",
]
