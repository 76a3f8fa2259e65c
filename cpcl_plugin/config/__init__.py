"""The plugin's config: its keys (keys.py), the values they may take (checks.py), and loading a
YAML file with command-line overrides (loading.py)."""
from ..errors import ConfigError
from .checks import (CHOICES, IMAGE_SIZES, RANGES, check_batch_split, check_config,
                     config_problems)
from .keys import add_cpcl_config
from .loading import load_config

__all__ = ["add_cpcl_config", "load_config", "check_config", "config_problems",
           "check_batch_split", "ConfigError", "RANGES", "CHOICES", "IMAGE_SIZES"]
