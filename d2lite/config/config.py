"""``@configurable``: let a class or function also be built from a config object.

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
"""

import functools
import inspect
from typing import Any, Callable, Dict, Optional

from omegaconf import DictConfig

__all__ = ["configurable"]


def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None):
    """Decorate a class ``__init__`` (with a ``from_config`` classmethod) or a function
    (with ``from_config=``) so that it can be called with a config as first argument.

    A call goes through ``from_config`` when its first positional argument is an
    omegaconf ``DictConfig`` or when a ``cfg=`` keyword argument is given (any object).
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
    if len(args) and isinstance(args[0], DictConfig):
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
