"""Find the LazyConfig files shipped with d2lite."""

from .model_zoo import get_config, get_config_file

__all__ = ["get_config", "get_config_file"]
