"""The settings users touch: one TOML file, decoded strictly, with env overrides.

Split by concept, so each part can change alone: `schema` says what a config may
hold, `load` finds and reads the file, `messages` turns decoding errors into ones
naming the key and line, `removed` forgives the keys earlier releases had, `reload`
follows the file in a running process. Callers import from here, never from the
modules, so the split is free to move again.
"""

from pkrelay.config.load import CONFIG_ENV, DEFAULT_CONFIG, ENV_PREFIX, WARNED_ENV, config_path, load
from pkrelay.config.reload import LiveSettings
from pkrelay.config.schema import (
    MQTT_STATE_EVENTS,
    ConfigError,
    DatabaseConfig,
    DeliveryConfig,
    DiscordSink,
    LogLevel,
    MqttSink,
    PluralKitConfig,
    RedisConfig,
    Secret,
    ServerConfig,
    Settings,
    ShapedSink,
    Sink,
    SystemConfig,
    WebhookSink,
)

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG", "ENV_PREFIX", "MQTT_STATE_EVENTS", "WARNED_ENV", "ConfigError", "DatabaseConfig",
    "DeliveryConfig", "DiscordSink", "LiveSettings", "LogLevel", "MqttSink", "PluralKitConfig", "RedisConfig",
    "Secret", "ServerConfig", "Settings", "ShapedSink", "Sink", "SystemConfig", "WebhookSink", "config_path", "load",
]
