"""LazyCall and LazyConfig: Python/YAML config files made of lazy calls and plain data.

A config file is a Python file whose top-level dicts and ``LazyCall`` nodes form the
config; config files import each other with relative imports::

    # configs/COCO-Detection/retinanet_R_50_FPN_1x.py
    from ..common.models.retinanet import model
    from ..common.train import train

    model.num_classes = 3
"""

import dataclasses
import inspect
import os
from collections import abc
from typing import Any, List, Tuple, Union

from omegaconf import DictConfig

from d2lite.utils.registry import _convert_target_to_string, locate

from .loading import load_config_file
from .overrides import apply_overrides
from .serialization import save_yaml, to_py, to_yaml

__all__ = ["LazyCall", "LazyConfig"]


class LazyCall:
    """Wrap a callable so that calling it records the call instead of running it.

    ``LazyCall(nn.Conv2d)(in_channels=3, out_channels=8)`` returns a ``DictConfig``
    ``{"_target_": nn.Conv2d, "in_channels": 3, "out_channels": 8}`` that can be
    edited and later built by :func:`d2lite.config.instantiate`. Only keyword
    arguments are supported.

    A dataclass target is stored as its import path, as detectron2 does (omegaconf
    cannot hold dataclass types), so ``L(MyDataclass)(field=1)`` instantiates to
    ``MyDataclass(field=1)``.

    Args:
        target: a callable, its dotted import path (str), or a mapping that
            instantiates to a callable.
    """

    def __init__(self, target: Any):
        if not (callable(target) or isinstance(target, (str, abc.Mapping))):
            raise TypeError(f"target of LazyCall must be a callable or its import path, got {target!r}.")
        self._target = target

    def __call__(self, **kwargs) -> DictConfig:
        target = self._target
        if isinstance(target, type) and dataclasses.is_dataclass(target):
            # omegaconf would turn a dataclass *type* into a structured config of its
            # defaults; like detectron2, store its import path instead.
            target = _dataclass_import_path(target)
        kwargs["_target_"] = target
        return DictConfig(content=kwargs, flags={"allow_objects": True})


def _dataclass_import_path(cls: type) -> str:
    """The import path of dataclass ``cls``; ValueError if it cannot be imported back."""
    try:
        path = _convert_target_to_string(cls)
        if locate(path) is cls:
            return path
    except (AttributeError, ImportError):
        pass
    raise ValueError(
        f"LazyCall({cls.__qualname__}): a dataclass target is stored as its import path (omegaconf "
        f"cannot hold dataclass types), but {cls.__module__}.{cls.__qualname__} cannot be imported. "
        "Define the dataclass at module level of an importable module."
    )


class LazyConfig:
    """Load, save, override and print omegaconf configs made of LazyCall nodes.

    A facade: loading lives in :mod:`d2lite.config.loading`, overrides in
    :mod:`d2lite.config.overrides`, YAML and Python output in :mod:`d2lite.config.serialization`.
    """

    @staticmethod
    def load_rel(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
        """Like :meth:`load`, with ``filename`` relative to the calling file's directory."""
        caller_fname = inspect.stack()[1][0].f_code.co_filename
        if caller_fname.startswith("<"):
            raise RuntimeError(f"load_rel({filename!r}) cannot find the file of its caller ({caller_fname}).")
        return LazyConfig.load(os.path.join(os.path.dirname(caller_fname), filename), keys)

    @staticmethod
    def load(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
        """Load a ``.py`` or ``.yaml``/``.yml`` config file.

        Args:
            filename: path, absolute or relative to the current directory.
            keys: names to return (one str, or a tuple of names). If None, return a
                DictConfig of all top-level values that are dicts/DictConfig/ListConfig
                (LazyCall nodes included) and whose name does not start with ``_``.

        Relative imports inside a config (``from ..common.train import train``) are
        resolved against the importing file's directory and must name an existing
        ``.py`` file or a directory (whose ``__init__.py`` runs if present; names in
        the import list may be ``.py`` files in it). Each import runs the file afresh,
        so two loads never share objects; imported dicts become DictConfig.
        Absolute imports (``from d2lite.config import LazyCall as L``) are normal.

        Raises:
            FileNotFoundError: naming the path, if it does not exist.
            SyntaxError: naming the file and line, for a Python config with a syntax error.
            ImportError: for a relative import that names no existing file.
        """
        return load_config_file(filename, keys)

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Write ``cfg`` as YAML that :meth:`load` reads back to an equal config.

        ``_target_`` callables are written as their import path, other importable
        classes and functions (``block_class=BasicBlock``) as ``!!python/name:``
        import paths that load back as the objects. Values YAML cannot
        hold (lambdas, local functions, arbitrary objects, ``_target_`` that cannot be
        imported back) are reported by key path in one warning and written as the
        string ``"<unserializable> TYPE: NAME"`` so the file still shows them; such a
        config loads, but those keys must be set again before ``instantiate``. In that
        case a complete cloudpickle copy is also written to ``filename + ".pkl"`` (as
        detectron2 does) and the warning names it; ``load`` never reads pickles.
        """
        save_yaml(cfg, filename)

    @staticmethod
    def to_yaml(cfg: Any) -> str:
        """The YAML text :meth:`save` would write (values YAML cannot hold are reported
        by key path in one warning, as by :meth:`save`)."""
        return to_yaml(cfg)

    @staticmethod
    def apply_overrides(cfg: Any, overrides: List[str]) -> Any:
        """Apply command-line overrides ``"a.b.c=value"`` in place and return ``cfg``.

        Values are parsed with ``ast.literal_eval`` (``1``, ``0.5``, ``[1,2]``,
        ``None``, ``'x'``), plus ``true``/``false``/``null``; anything else is a str.
        Digits in the key index lists (``model.pixel_mean.0=1``). A dict value for a
        dict/LazyCall key is merged key by key (each key must exist). A ``_target_``
        string must be importable.

        A key missing from a LazyCall node may still be set when it is a keyword
        argument of the node's target (``model.test_score_thresh=0.1`` on a RetinaNet
        config that leaves it at its default).

        Raises:
            KeyError: the key (or a parent) does not exist, and is no keyword argument
                of a LazyCall target; names the key and the closest existing keys.
            TypeError: the value's type does not fit the existing value (an int may
                replace a float, None may replace anything and anything may replace
                None; a str key keeps the override text as a str).
            ValueError: an override without ``=``.
        """
        return apply_overrides(cfg, overrides)

    @staticmethod
    def to_py(cfg: Any, prefix: str = "cfg.") -> str:
        """Python source that rebuilds ``cfg``.

        Each top-level key becomes ``{prefix}{key} = ...`` with ``L(Class)(...)`` for
        lazy calls (imports written at the top) and ``dict(...)``/list literals for
        data; interpolations stay ``"${...}"`` strings. With ``prefix=""`` the result
        is itself a config file. Values that have no Python source (lambdas, local
        functions, arbitrary objects) are written as ``"<unserializable> ..."``
        strings.
        """
        return to_py(cfg, prefix)
