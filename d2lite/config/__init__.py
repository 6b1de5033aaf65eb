"""d2lite's config system: LazyCall configs in Python files, ``instantiate`` and
``@configurable``. Config files write ``from d2lite.config import LazyCall as L``."""

from .config import configurable
from .instantiate import instantiate
from .lazy import LazyCall, LazyConfig

__all__ = ["LazyConfig", "LazyCall", "instantiate", "configurable"]
