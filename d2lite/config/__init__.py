"""d2lite's config system: LazyCall configs in Python files, ``instantiate`` and
``@configurable``. Config files write ``from d2lite.config import LazyCall as L``.

detectron2's YAML configs load into :func:`get_cfg` (a :class:`CfgNode`) and build the
same components through their ``from_config`` methods, e.g.
``d2lite.modeling.build_model(cfg)``; :func:`d2lite.config.yacs_to_lazy.convert_yacs_config`
turns such a config into a LazyConfig file.
"""

from .config import CfgNode, configurable, get_cfg
from .instantiate import instantiate
from .lazy import LazyCall, LazyConfig

__all__ = ["LazyConfig", "LazyCall", "instantiate", "configurable", "CfgNode", "get_cfg"]
