"""dsv3_edu: DeepSeek-V3 built from scratch, for learning. See README.md."""
from .config import PRESETS, ModelConfig, get_config
from .runtime import prefer_triton_interpreter

prefer_triton_interpreter()  # before anything imports triton

__all__ = ["ModelConfig", "PRESETS", "get_config"]
__version__ = "0.1.0"
