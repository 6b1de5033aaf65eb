"""Build objects from lazy configs (dicts with a ``_target_`` key)."""

import copy
import dataclasses
import difflib
import inspect
import logging
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

try:  # omegaconf >= 2.4 keeps tuples as (immutable) TupleConfig
    from omegaconf import TupleConfig
except ImportError:  # older omegaconf turns tuples into ListConfig
    TupleConfig = ListConfig

from d2lite.utils.registry import _convert_target_to_string, locate

__all__ = ["dump_dataclass", "instantiate"]

logger = logging.getLogger(__name__)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _full_key(cfg: Any) -> str:
    """Key path of an omegaconf node from its root config ("" for a root or plain object)."""
    if isinstance(cfg, (DictConfig, ListConfig, TupleConfig)):
        try:
            return str(cfg._get_full_key(None) or "")
        except Exception:  # detached or unusual nodes have no path; that is fine
            return ""
    return ""


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    try:
        return _convert_target_to_string(target)
    except AttributeError:
        return repr(target)


def dump_dataclass(obj: Any) -> dict:
    """Dump a dataclass object into a lazy config that instantiates to an equal object.

    Nested dataclass objects (also inside lists and tuples) become nested configs.
    Same as detectron2's, except that tuples stay tuples, so the round trip is exact.

    Args:
        obj: a dataclass instance (not a dataclass type).

    Returns:
        dict: ``{"_target_": "module.ClassName", field: value, ...}``.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"dump_dataclass() needs a dataclass instance, got {obj!r}.")
    ret: dict = {"_target_": _convert_target_to_string(type(obj))}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dump_dataclass(v)
        elif type(v) in (list, tuple):  # a tuple stays a tuple (detectron2 makes it a list)
            v = type(v)(dump_dataclass(x) if dataclasses.is_dataclass(x) and not isinstance(x, type) else x for x in v)
        ret[f.name] = v
    return ret


def _check_kwargs(fn: Any, kwargs: dict, path: str, target_name: str) -> None:
    """Raise a TypeError naming the key path when ``kwargs`` has names ``fn`` does not accept."""
    init = getattr(fn, "__init__", None) if isinstance(fn, type) else fn
    if "cfg" in kwargs and getattr(init, "_d2lite_configurable", False):
        return  # @configurable: from_config decides which keywords it takes
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in kwargs if k not in accepted]
    if bad:
        hints = []
        for k in bad:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = f"config key '{path}'" if path else "the root config"
        raise TypeError(
            f"Cannot instantiate {where} with _target_={target_name}: unexpected argument(s) "
            f"{', '.join(hints)}. {target_name} accepts: {', '.join(accepted) or 'no keyword arguments'}."
        )


def instantiate(cfg: Any) -> Any:
    """Recursively build objects described by lazy configs.

    A lazy config is a mapping with a ``_target_`` key (a callable, or its dotted
    import path such as ``"d2lite.modeling.RetinaNet"``); it is replaced by
    ``_target_(**other_keys)`` after its values were instantiated. Lists,
    ``ListConfig`` (returned as a ``ListConfig`` like detectron2), tuples and
    ``TupleConfig`` (returned as tuples) and plain dicts are walked; a list, tuple or
    dict holding no config comes back as the same object. Any other value, including a
    ``DictConfig`` without ``_target_``, is returned as the same object (as detectron2
    does).

    Dataclasses, as in detectron2: ``L(MyDataclass)(field=1)`` builds ``MyDataclass(field=1)``;
    a dataclass object put into a config (which omegaconf stores as a structured config)
    comes back as a dataclass object, so a dataclass object given as a value (or, if it is
    callable, as ``_target_``) is passed on as an object.

    Args:
        cfg: a config object or plain data.

    Returns:
        the built object.

    Raises:
        TypeError: for an argument name the target does not accept; the message names
            the config key path (e.g. ``model.backbone.bottom_up``), the target and
            the argument.
        ImportError: when a ``_target_`` string cannot be located (names key and string).
        Any error raised by a target is re-raised as the same type (when possible)
        with the key path and target in its message, chained to the original.
    """
    return _instantiate(cfg, _full_key(cfg))


def _instantiate(cfg: Any, path: str) -> Any:
    """instantiate() that knows the key path of ``cfg`` (for error messages)."""
    if isinstance(cfg, ListConfig):
        items = [_instantiate(cfg[i], _join(path, i)) for i in range(len(cfg))]
        return ListConfig(items, flags={"allow_objects": True})
    if isinstance(cfg, TupleConfig):
        return tuple(_instantiate(cfg[i], _join(path, i)) for i in range(len(cfg)))
    if isinstance(cfg, list):
        items = [_instantiate(x, _join(path, i)) for i, x in enumerate(cfg)]
        return cfg if all(a is b for a, b in zip(items, cfg)) else items
    if type(cfg) is tuple:  # namedtuples and other tuple subclasses are data, left alone
        items = tuple(_instantiate(x, _join(path, i)) for i, x in enumerate(cfg))
        return cfg if all(a is b for a, b in zip(items, cfg)) else items
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(cfg._metadata.object_type):
        return OmegaConf.to_object(cfg)
    if isinstance(cfg, abc.Mapping) and "_target_" in cfg:
        kwargs = {k: _instantiate(cfg[k], _join(path, k)) for k in cfg.keys() if k != "_target_"}
        target = _instantiate(cfg["_target_"], _join(path, "_target_"))
        if isinstance(target, str):
            try:
                target_obj = locate(target)
            except ImportError as e:
                raise ImportError(f"Config key '{_join(path, '_target_')}': {e}") from e
        else:
            target_obj = target
        target_name = _target_name(target)
        if not callable(target_obj):
            hint = ""
            if dataclasses.is_dataclass(target_obj):
                hint = (
                    f" A dataclass object is a callable _target_ only if it defines __call__; to build a "
                    f"{type(target_obj).__name__}, give its class: L({type(target_obj).__name__})(...)."
                )
            raise TypeError(
                f"Config key '{_join(path, '_target_')}' must be a callable or its import path, "
                f"got {target_obj!r}.{hint}"
            )
        _check_kwargs(target_obj, kwargs, path, target_name)
        try:
            return target_obj(**kwargs)
        except Exception as e:
            where = f"config key '{path}'" if path else "the root config"
            msg = f"Error when instantiating {where} (_target_={target_name}): {type(e).__name__}: {e}"
            try:
                wrapped = type(e)(msg)
            except Exception:
                wrapped = None
            if wrapped is None or wrapped.args != (msg,):
                raise RuntimeError(msg) from e
            raise wrapped from e
    if isinstance(cfg, dict):  # detectron2 returns plain dicts as they are; d2lite builds the configs inside
        built = {k: _instantiate(v, _join(path, k)) for k, v in cfg.items()}
        if all(built[k] is v for k, v in cfg.items()):
            return cfg  # nothing to build: the same object
        if type(cfg) is dict:
            return built
        out = copy.copy(cfg)  # keeps the dict subclass (OrderedDict, defaultdict, ...)
        out.update(built)
        return out
    return cfg
