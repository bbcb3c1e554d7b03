"""Configuration: load a CONFIG_DIR into typed models, with errors that name file, key and line.

``load_config(CONFIG_DIR)`` returns a :class:`PipelineConfig` or raises one :class:`ConfigError`
listing every issue; ``load_file(path)`` checks one file on its own (the validator commands).
See ``docs/configuration.md``.
"""

from dps.config.loader import check_directory, check_file, load_config, load_file
from dps.config.models import PipelineConfig
from dps.core.errors import ConfigError, ConfigIssue

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "PipelineConfig",
    "check_directory",
    "check_file",
    "load_config",
    "load_file",
]
