"""Configuration: schema (pydantic) and loader (YAML + dotted overrides)."""

from components.config.loader import ConfigError, config_dict, config_hash, load_config, validate_config
from components.config.schema import MedtuneConfig

__all__ = ["ConfigError", "MedtuneConfig", "config_dict", "config_hash", "load_config", "validate_config"]
