"""The config object of detectron2's YAML files (:class:`CfgNode`, :func:`get_cfg`) and
``@configurable``, which lets a component also be built from such a config.

Components take explicit keyword arguments; ``from_config`` is optional sugar that
maps a config to those arguments::

    class A:
        @configurable
        def __init__(self, a: int, b: int = 2):
            ...

        @classmethod
        def from_config(cls, cfg):
            return {"a": cfg.A, "b": cfg.B}

    A(a=1, b=2)                 # regular call
    A(cfg)                      # A(**A.from_config(cfg))
    A(cfg, b=3)                 # explicit keywords override from_config's values

    @configurable(from_config=lambda cfg: {"x": cfg.X})
    def build(x, y=1): ...

detectron2's YAML files load into :func:`get_cfg`'s config::

    cfg = get_cfg()
    cfg.merge_from_file("configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml")  # follows _BASE_
    cfg.merge_from_list(["MODEL.RETINANET.NUM_CLASSES", "3"])
    cfg.freeze()
    model = d2lite.modeling.build_model(cfg)
"""

import difflib
import functools
import inspect
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from omegaconf import DictConfig
from yacs.config import CfgNode as _YacsCfgNode

from d2lite.utils.file_io import PathManager

from .restricted_yaml import load_yaml

__all__ = ["CfgNode", "get_cfg", "configurable"]

logger = logging.getLogger(__name__)

_LATEST_VERSION = 2


class CfgNode(_FvcoreCfgNode):
    """fvcore's ``CfgNode`` (yacs with ``_BASE_``) for detectron2's YAML files, with:

    1. Safe loading: YAML files are read without running code; the
       ``!!python/object/apply:eval`` values of detectron2's files go through
       :func:`d2lite.config.restricted_yaml.restricted_eval` (list/number literals and
       comprehensions), every other Python tag is an error naming the file and key.
       ``allow_unsafe`` is accepted for detectron2 compatibility and changes nothing.
    2. Scope: keys detectron2 has but d2lite does not implement
       (:data:`d2lite.config.defaults.OUT_OF_SCOPE_KEYS`: masks, keypoints, ROI heads,
       rotated anchors, ...) are dropped with one warning listing them; any other
       unknown key is a ``KeyError`` naming the file and key, with a suggestion.
    3. Versioning: files of detectron2's config version 2 (or without VERSION) load;
       older versions are rejected.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        """The YAML mapping of ``filename`` merged on top of its ``_BASE_`` file(s).

        ``_BASE_`` is a path (or list of paths) relative to the file, absolute, or
        starting with ``~``; base values are overridden by the file's own values.
        """
        return cls._load_with_base(filename, [])

    @classmethod
    def _load_with_base(cls, filename: str, chain: List[str]) -> Dict[str, Any]:
        key = os.path.abspath(filename) if "://" not in filename else filename
        if key in chain:
            raise ValueError(f"Circular _BASE_ chain: {' -> '.join(chain + [key])}")
        if not PathManager.isfile(filename):
            where = f" (the _BASE_ of {chain[-1]})" if chain else ""
            raise FileNotFoundError(f"Config file '{filename}'{where} does not exist.")
        cfg = load_yaml(filename)
        if BASE_KEY not in cfg:
            return cfg
        bases = cfg.pop(BASE_KEY)
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ValueError(f"{filename}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
        base_cfg: Dict[str, Any] = {}
        for base in bases:
            if base.startswith("~"):
                base = os.path.expanduser(base)
            if not (os.path.isabs(base) or "://" in base):
                base = os.path.join(os.path.dirname(filename), base)
            _merge_dict_into(cls._load_with_base(base, chain + [key]), base_cfg, base)
        _merge_dict_into(cfg, base_cfg, filename)
        return base_cfg

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config.

        Raises:
            FileNotFoundError: the file or one of its bases does not exist.
            KeyError: a key unknown to detectron2's schema (naming file and key).
            ValueError: a value of the wrong type, an older config version, or a
                rejected ``!!python`` tag (naming file and key).
        """
        loaded = self.load_yaml_with_base(cfg_filename)
        version = loaded.get("VERSION", None)
        if version is None:
            logger.warning(f"Config '{cfg_filename}' has no VERSION; assuming detectron2's version {_LATEST_VERSION}.")
        elif version != _LATEST_VERSION:
            raise ValueError(
                f"{cfg_filename}: VERSION {version} is not supported; d2lite reads detectron2 config files of "
                f"VERSION {_LATEST_VERSION} (upgrade older ones with detectron2.config.compat.upgrade_config)."
            )
        self._merge_checked(loaded, cfg_filename)

    def merge_from_other_cfg(self, cfg_other: _YacsCfgNode) -> None:
        """Merge another config (or nested dict) into this one, with the same key checks as files."""
        if BASE_KEY in cfg_other:
            raise KeyError(f"The reserved key '{BASE_KEY}' can only be used in files!")
        self._merge_checked(dict(cfg_other), "the merged config")

    def merge_from_list(self, cfg_list: List[Any]) -> None:
        """Merge ``[KEY1, VALUE1, KEY2, VALUE2, ...]`` (values are strings parsed as Python
        literals, or objects), e.g. ``["SOLVER.BASE_LR", "0.02"]``."""
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"merge_from_list needs KEY VALUE pairs; got an odd number of items: {cfg_list}")
        kept: List[Any] = []
        dropped: List[str] = []
        for full_key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise KeyError(f"The reserved key '{BASE_KEY}' can only be used in files!")
            node: Any = self
            parts = str(full_key).split(".")
            for i, part in enumerate(parts):
                if not isinstance(node, _YacsCfgNode) or part not in node:
                    prefix = ".".join(parts[:i])
                    if _is_out_of_scope(full_key):
                        dropped.append(full_key)
                        break
                    raise KeyError(_unknown_key_message("merge_from_list", full_key, node, prefix))
                node = node[part]
            else:
                kept += [full_key, value]
        _warn_out_of_scope(dropped, "merge_from_list")
        try:
            super().merge_from_list(kept)
        except (ValueError, AssertionError) as e:
            raise ValueError(f"Cannot merge {kept}: {e}") from e

    def _merge_checked(self, loaded: Dict[str, Any], source: str) -> None:
        dropped: List[str] = []
        kept = _drop_out_of_scope(self, loaded, "", dropped, source)
        _warn_out_of_scope(dropped, source)
        try:
            _FvcoreCfgNode.merge_from_other_cfg(self, type(self)(kept))
        except (KeyError, ValueError, AssertionError) as e:
            message = e.args[0] if e.args else str(e)
            raise type(e)(f"{source}: {message}") from e


def _merge_dict_into(a: Dict[str, Any], b: Dict[str, Any], source: str) -> None:
    """Merge dict ``a`` into ``b`` (values of ``a`` win), as fvcore's ``_BASE_`` inheritance."""
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ValueError(f"{source}: cannot inherit key '{k}' from its base: the base has a non-mapping value")
            _merge_dict_into(v, b[k], source)
        else:
            b[k] = v


def _is_out_of_scope(full_key: str) -> bool:
    from .defaults import OUT_OF_SCOPE_KEYS

    return any(full_key == k or full_key.startswith(k + ".") for k in OUT_OF_SCOPE_KEYS)


def _unknown_key_message(source: str, full_key: str, node: Any, prefix: str) -> str:
    candidates = list(node.keys()) if isinstance(node, _YacsCfgNode) else []
    name = full_key[len(prefix) + 1 :] if prefix else full_key
    close = difflib.get_close_matches(name.split(".")[0], candidates, n=1)
    hint = f" Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
    return (
        f"{source}: unknown config key '{full_key}': it is neither one of d2lite's keys (get_cfg()) nor a "
        f"detectron2 key outside d2lite's scope.{hint}"
    )


def _drop_out_of_scope(node: _YacsCfgNode, data: Dict[str, Any], prefix: str, dropped: List[str], source: str):
    """Copy of ``data`` without out-of-scope keys (appended to ``dropped``); unknown keys raise KeyError."""
    kept: Dict[str, Any] = {}
    for k, v in data.items():
        full = f"{prefix}{k}"
        if k in node:
            if isinstance(node[k], _YacsCfgNode) and isinstance(v, dict):
                kept[k] = _drop_out_of_scope(node[k], v, full + ".", dropped, source)
            else:
                kept[k] = v
        elif _is_out_of_scope(full):
            dropped.append(full)
        elif node.is_new_allowed():
            kept[k] = v
        else:
            raise KeyError(_unknown_key_message(source, full, node, prefix.rstrip(".")))
    return kept


def _warn_out_of_scope(dropped: List[str], source: str) -> None:
    if dropped:
        logger.warning(
            f"{source}: ignoring {len(dropped)} detectron2 config key(s) outside d2lite's scope (box detection "
            f"with RetinaNet; no masks, keypoints, proposals, ROI heads or rotated boxes): {', '.join(dropped)}"
        )


def get_cfg() -> CfgNode:
    """A copy of the default config (detectron2's default values for d2lite's keys, see
    :mod:`d2lite.config.defaults`)."""
    from .defaults import _C

    return _C.clone()


def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None):
    """Decorate a class ``__init__`` (with a ``from_config`` classmethod) or a function
    (with ``from_config=``) so that it can be called with a config as first argument.

    A call goes through ``from_config`` when its first positional argument is a
    :class:`CfgNode` (yacs/fvcore) or an omegaconf ``DictConfig``, or when a ``cfg=``
    keyword argument is given (any object).
    Keyword arguments that ``from_config`` does not accept are passed through to the
    decorated callable and override what ``from_config`` returned.

    Raises:
        TypeError: if the class has no ``from_config`` classmethod, or ``from_config``'s
            first argument is not named ``cfg``.
    """
    if init_func is not None:
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__" and from_config is None):
            raise TypeError(
                "@configurable without arguments decorates a class __init__; for a function "
                "use @configurable(from_config=...)."
            )

        @functools.wraps(init_func)
        def wrapped_init(self, *args, **kwargs):
            from_config_func = getattr(type(self), "from_config", None)
            if from_config_func is None or not inspect.ismethod(from_config_func):
                raise TypeError(
                    f"{type(self).__name__} uses @configurable, so it must define a 'from_config' classmethod."
                )
            if _called_with_cfg(*args, **kwargs):
                explicit_args = _get_args_from_config(from_config_func, *args, **kwargs)
                init_func(self, **explicit_args)
            else:
                init_func(self, *args, **kwargs)

        wrapped_init._d2lite_configurable = True  # type: ignore[attr-defined]
        return wrapped_init

    if from_config is None:
        return configurable  # @configurable() used like @configurable
    if not inspect.isfunction(from_config) and not inspect.ismethod(from_config):
        raise TypeError(f"from_config must be a function, got {type(from_config).__name__}.")

    def wrapper(orig_func):
        @functools.wraps(orig_func)
        def wrapped(*args, **kwargs):
            if _called_with_cfg(*args, **kwargs):
                explicit_args = _get_args_from_config(from_config, *args, **kwargs)
                return orig_func(**explicit_args)
            return orig_func(*args, **kwargs)

        wrapped.from_config = from_config  # type: ignore[attr-defined]
        wrapped._d2lite_configurable = True  # type: ignore[attr-defined]
        return wrapped

    return wrapper


def _called_with_cfg(*args, **kwargs) -> bool:
    """Whether the call should go through ``from_config``."""
    if len(args) and isinstance(args[0], (_YacsCfgNode, DictConfig)):
        return True
    return "cfg" in kwargs


def _get_args_from_config(from_config_func: Callable, *args, **kwargs) -> Dict[str, Any]:
    """Call ``from_config`` with the arguments it accepts; merge the rest on top."""
    signature = inspect.signature(from_config_func)
    params = list(signature.parameters.values())
    name = getattr(from_config_func, "__qualname__", repr(from_config_func))
    if not params or params[0].name != "cfg":
        raise TypeError(
            f"{name}(...) is used as a from_config function, so its first argument must be "
            f"named 'cfg'; its signature is {signature}."
        )
    extra: Dict[str, Any] = {}
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        # Keywords from_config does not take go straight to the decorated callable.
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in signature.parameters}
    ret = from_config_func(*args, **kwargs)
    if not isinstance(ret, dict):
        raise TypeError(f"{name} must return a dict of keyword arguments, got {type(ret).__name__}.")
    return {**ret, **extra}
