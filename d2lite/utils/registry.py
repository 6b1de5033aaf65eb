"""Finding Python objects by name: dotted paths (:func:`locate`) and :class:`Registry`.

A LazyConfig names a class either by the object itself (``L(RetinaNet)(...)``) or by its
import path (``"d2lite.modeling.RetinaNet"``), and needs no registry. detectron2's YAML
configs name components by short strings (``META_ARCHITECTURE: "RetinaNet"``,
``BACKBONE.NAME: "build_retinanet_resnet_fpn_backbone"``); the registries
``META_ARCH_REGISTRY``, ``BACKBONE_REGISTRY`` and ``ANCHOR_GENERATOR_REGISTRY`` in
:mod:`d2lite.modeling` map those strings to the builders, as in detectron2.
"""

import difflib
import importlib
from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry

__all__ = ["locate", "Registry"]


class Registry(_FvcoreRegistry):
    """fvcore's name -> object registry (detectron2's ``Registry``); an unknown name is a
    KeyError that lists the registered names.

    Example::

        BACKBONE_REGISTRY = Registry("BACKBONE")

        @BACKBONE_REGISTRY.register()
        def build_my_backbone(cfg, input_shape): ...

        BACKBONE_REGISTRY.get("build_my_backbone")
    """

    def get(self, name: str) -> Any:
        """The object registered as ``name``.

        Raises:
            KeyError: naming the registry, the unknown name, the closest registered name
                and all registered names.
        """
        ret = self._obj_map.get(name)
        if ret is None:
            names = sorted(self._obj_map)
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise KeyError(
                f"No object named '{name}' found in the '{self._name}' registry.{hint} "
                f"Registered: {', '.join(names) or 'none'}. Register yours with @{self._name}_REGISTRY.register() "
                "in a module that is imported before the config is built."
            )
        return ret


def _convert_target_to_string(t: Any) -> str:
    """Inverse of :func:`locate`: the shortest ``module.qualname`` that locates ``t``.

    For ``d2lite.modeling.meta_arch.retinanet.RetinaNet`` this tries
    ``d2lite.RetinaNet``, ``d2lite.modeling.RetinaNet``, ... and returns the first
    one that :func:`locate` resolves back to the same object.

    Raises:
        AttributeError: if ``t`` has no ``__module__``/``__qualname__`` (e.g. an instance).
    """
    owner = getattr(t, "__self__", None)
    if isinstance(owner, type):  # classmethod bound to its class, e.g. OrderedDict.fromkeys
        module, qualname = owner.__module__, f"{owner.__qualname__}.{t.__name__}"
    else:
        module, qualname = t.__module__, t.__qualname__
    if module is None:
        raise AttributeError(f"{t!r} has no __module__, so it has no import path.")
    parts = module.split(".")
    for k in range(1, len(parts)):
        candidate = ".".join(parts[:k]) + "." + qualname
        try:
            if _same(locate(candidate), t):
                return candidate
        except ImportError:
            pass
    return f"{module}.{qualname}"


def _same(a: Any, b: Any) -> bool:
    """Identity, or equality for bound methods (each attribute access creates a new one)."""
    if a is b:
        return True
    return hasattr(a, "__self__") and hasattr(b, "__self__") and bool(a == b)


def locate(name: str) -> Any:
    """Return the object at dotted path ``name``, e.g. ``"torch.nn.Conv2d"``.

    The longest importable module prefix is imported and the remaining parts are
    looked up as attributes, so nested names such as
    ``"d2lite.structures.Boxes.cat"`` (a method of a class) work too.

    Raises:
        ImportError: naming ``name`` when no prefix is importable or an attribute
            is missing.
    """
    if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
        raise ImportError(f"Cannot locate {name!r}: expected a dotted path like 'torch.nn.Conv2d'.")
    parts = name.split(".")
    module = None
    n_mod = 0
    first_error: Exception = None  # type: ignore[assignment]
    for i in range(len(parts), 0, -1):
        mod_name = ".".join(parts[:i])
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            # Only "this module does not exist" lets us try a shorter prefix; a module
            # that exists but fails to import must surface its own error.
            if e.name is not None and not (mod_name == e.name or mod_name.startswith(e.name + ".")):
                raise ImportError(f"Cannot locate {name!r}: importing {mod_name!r} failed: {e}") from e
            first_error = first_error or e
            continue
        except ImportError as e:  # the module exists but its own imports fail
            raise ImportError(f"Cannot locate {name!r}: importing {mod_name!r} failed: {e}") from e
        n_mod = i
        break
    if module is None:
        raise ImportError(f"Cannot locate {name!r}: no module named {parts[0]!r}.") from first_error
    obj = module
    for j in range(n_mod, len(parts)):
        try:
            obj = getattr(obj, parts[j])
        except AttributeError as e:
            raise ImportError(f"Cannot locate {name!r}: {'.'.join(parts[:j])!r} has no attribute {parts[j]!r}.") from e
    return obj
