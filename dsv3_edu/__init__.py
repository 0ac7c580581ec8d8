"""dsv3_edu: DeepSeek-V3 built from scratch, for learning. See README.md.

Importing the package is cheap and changes nothing in the process: it loads the configuration only (no torch).
"""
from .config import PRESETS, ModelConfig, get_config

__all__ = ["ModelConfig", "PRESETS", "get_config"]
__version__ = "0.1.0"
