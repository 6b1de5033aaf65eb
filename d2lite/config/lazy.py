"""LazyCall and LazyConfig: Python/YAML config files made of lazy calls and plain data.

A config file is a Python file whose top-level dicts and ``LazyCall`` nodes form the
config; config files import each other with relative imports::

    # configs/COCO-Detection/retinanet_R_50_FPN_1x.py
    from ..common.models.retinanet import model
    from ..common.train import train

    model.num_classes = 3
"""

import ast
import builtins
import difflib
import importlib.machinery
import importlib.util
import inspect
import keyword
import math
import os
import uuid
import warnings
from collections import abc
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from d2lite.utils.registry import _convert_target_to_string, _same, locate

try:  # omegaconf >= 2.4 keeps tuples as (immutable) TupleConfig
    from omegaconf import TupleConfig
except ImportError:  # older omegaconf turns tuples into ListConfig
    TupleConfig = ListConfig

_SEQ_CONFIGS = (ListConfig, TupleConfig)

__all__ = ["LazyCall", "LazyConfig"]


class LazyCall:
    """Wrap a callable so that calling it records the call instead of running it.

    ``LazyCall(nn.Conv2d)(in_channels=3, out_channels=8)`` returns a ``DictConfig``
    ``{"_target_": nn.Conv2d, "in_channels": 3, "out_channels": 8}`` that can be
    edited and later built by :func:`d2lite.config.instantiate`. Only keyword
    arguments are supported.

    Args:
        target: a callable, its dotted import path (str), or a mapping that
            instantiates to a callable.
    """

    def __init__(self, target: Any):
        if not (callable(target) or isinstance(target, (str, abc.Mapping))):
            raise TypeError(f"target of LazyCall must be a callable or its import path, got {target!r}.")
        self._target = target

    def __call__(self, **kwargs) -> DictConfig:
        kwargs["_target_"] = self._target
        return DictConfig(content=kwargs, flags={"allow_objects": True})


def _cast_to_config(obj: Any) -> Any:
    if isinstance(obj, dict):
        return DictConfig(obj, flags={"allow_objects": True})
    return obj


def _compile_config(filename: str) -> Any:
    """Read and compile a Python config file; syntax errors name the file and line."""
    with open(filename, encoding="utf-8") as f:
        content = f.read()
    try:
        return compile(content, filename, "exec")
    except SyntaxError as e:
        err = SyntaxError(f"Config file {filename}, line {e.lineno}: {e.msg}")
        err.filename, err.lineno, err.offset, err.text = filename, e.lineno, e.offset, e.text
        raise err from e


_CFG_PACKAGE_NAME = "d2lite._cfg_loader"
"""Namespace that config files are executed in (never registered in sys.modules)."""


def _random_package_name(filename: str) -> str:
    return _CFG_PACKAGE_NAME + uuid.uuid4().hex[:8] + "." + os.path.basename(filename)


def _exec_config_module(path: str) -> Any:
    """Execute ``path`` (a .py file, or a directory with optional __init__.py) as a module."""
    spec = importlib.machinery.ModuleSpec(_random_package_name(path), None, origin=path)
    module = importlib.util.module_from_spec(spec)
    if os.path.isdir(path):
        init = os.path.join(path, "__init__.py")
        module.__path__ = [path]  # type: ignore[attr-defined]
        if not os.path.isfile(init):
            module.__file__ = init  # lets relative imports of its children resolve
            return module
        path = init
    module.__file__ = path
    module.__package__ = module.__name__
    exec(_compile_config(path), module.__dict__)
    return module


def _resolve_relative(importer: str, name: str, level: int, statement: str) -> str:
    """Path (``.py`` file or directory) that a relative import in ``importer`` refers to."""
    cur = os.path.dirname(os.path.abspath(importer))
    for _ in range(level - 1):
        parent = os.path.dirname(cur)
        if parent == cur:
            raise ImportError(f"{importer}: `{statement}` goes above the filesystem root.")
        cur = parent
    for part in name.split(".") if name else []:
        cur = os.path.join(cur, part)
    if name and os.path.isfile(cur + ".py"):
        target, folder = cur + ".py", os.path.dirname(cur)
    elif os.path.isdir(cur):
        target, folder = cur, cur
    else:
        target = None
    if target is not None:
        # Config folders are plain folders of .py files. A Python package (__init__.py) or
        # a project root (setup.py, pyproject.toml, .git) is code, not part of the config tree.
        marker = next(
            (
                m
                for m in ("__init__.py", "setup.py", "pyproject.toml", ".git")
                if os.path.exists(os.path.join(folder, m))
            ),
            None,
        )
        if marker is not None:
            raise ImportError(
                f"Cannot run `{statement}` in config file {importer}: {target} is outside the config "
                f"tree ({folder} holds {marker}). Relative imports in config files may only name other "
                "config files; import code with an absolute import (e.g. `from d2lite.modeling import ...`)."
            )
        return target
    raise ImportError(
        f"Cannot run `{statement}` in config file {importer}: {cur}.py does not exist "
        "(relative imports in config files refer to .py files or directories, relative "
        "to the importing file)."
    )


def _statement(name: str, fromlist: Any, level: int) -> str:
    names = ", ".join(fromlist) if fromlist else "..."
    return f"from {'.' * level}{name} import {names}"


@contextmanager
def _patch_import():
    """Make relative imports inside config files load files by location.

    Imported config files are executed fresh (nothing is cached in ``sys.modules``),
    so loading a config twice gives independent objects; imported dicts become
    DictConfig. Absolute imports are untouched.
    """
    old_import = builtins.__import__

    def new_import(name, globals=None, locals=None, fromlist=(), level=0):
        if not (
            level != 0 and globals is not None and (globals.get("__package__") or "").startswith(_CFG_PACKAGE_NAME)
        ):
            return old_import(name, globals, locals, fromlist, level)
        importer = globals["__file__"]
        statement = _statement(name, fromlist, level)
        path = _resolve_relative(importer, name, level, statement)
        module = _exec_config_module(path)
        for attr in fromlist or ():
            if attr == "*":
                continue
            if attr not in module.__dict__:
                sub = os.path.join(path, attr) if os.path.isdir(path) else None
                if sub is not None and (os.path.isfile(sub + ".py") or os.path.isdir(sub)):
                    module.__dict__[attr] = _exec_config_module(sub + ".py" if os.path.isfile(sub + ".py") else sub)
                    continue
                raise ImportError(
                    f"Cannot run `{statement}` in config file {importer}: {path} does not define {attr!r}."
                )
            module.__dict__[attr] = _cast_to_config(module.__dict__[attr])
        return module

    builtins.__import__ = new_import
    try:
        yield new_import
    finally:
        builtins.__import__ = old_import


_UNSERIALIZABLE = "<unserializable>"
"""Prefix of the string that :meth:`LazyConfig.save` writes in place of a value YAML cannot hold."""


def _yaml_safe(obj: Any, path: str, bad: List[str]) -> Any:
    """Plain-data copy of ``obj`` for YAML; unsupported values become marked strings."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, abc.Mapping):
        out = {}
        if "_target_" in obj:  # written first: the YAML reads like the call it describes
            items = [("_target_", obj["_target_"])] + [(k, v) for k, v in obj.items() if k != "_target_"]
        else:
            items = list(obj.items())
        for k, v in items:
            sub = f"{path}.{k}" if path else str(k)
            if k == "_target_" and not isinstance(v, (str, abc.Mapping)):
                s = _target_string(v)
                if s is not None:
                    out[k] = s
                    continue
            out[k] = _yaml_safe(v, sub, bad)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_yaml_safe(v, f"{path}.{i}" if path else str(i), bad) for i, v in enumerate(obj)]
        return tuple(items) if type(obj) is tuple else items
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        name = _target_string(obj)  # e.g. block_class=BasicBlock: saved by import path
        if name is not None:
            return _ImportPath(name)
    bad.append(path)
    return f"{_UNSERIALIZABLE} {type(obj).__name__}: {_short_repr(obj)}"


_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"  # the tag PyYAML's full loader also reads
_NAME_TAG = "tag:yaml.org,2002:python/name:"  # PyYAML's tag for an importable object


class _ImportPath(str):
    """An importable class or function, saved as ``!!python/name:module.qualname``."""


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumper that keeps tuples as ``!!python/tuple``."""


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that reads ``!!python/tuple`` back as a tuple (and nothing unsafe)."""


_Dumper.add_representer(tuple, lambda dumper, data: dumper.represent_sequence(_TUPLE_TAG, data, flow_style=True))
_Loader.add_constructor(_TUPLE_TAG, lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_Dumper.add_representer(_ImportPath, lambda dumper, data: dumper.represent_scalar(_NAME_TAG + str(data), ""))
# Only imports the named object (as a `_target_` string would), never calls anything.
_Loader.add_multi_constructor(_NAME_TAG, lambda loader, suffix, node: locate(suffix))


def _short_repr(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    if name is not None:
        return f"{getattr(obj, '__module__', '?')}.{name}"
    r = repr(obj)
    return r if len(r) <= 80 else r[:77] + "..."


def _target_string(target: Any) -> Optional[str]:
    """Dotted path that locates back to ``target``, or None if there is none."""
    try:
        s = _convert_target_to_string(target)
        if _same(locate(s), target):
            return s
    except (AttributeError, ImportError):
        pass
    return None


def _parse_override_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("null", "none", "~"):
            return None
        return text


def _all_keys(cfg: Any, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(cfg._get_node(k), full + "."))
    elif isinstance(cfg, _SEQ_CONFIGS):
        for i in range(len(cfg)):
            full = f"{prefix}{i}"
            keys.append(full)
            keys.extend(_all_keys(cfg._get_node(i), full + "."))
    return keys


def _type_name(v: Any) -> str:
    if isinstance(v, DictConfig):
        return "lazy call" if "_target_" in v else "dict"
    if isinstance(v, TupleConfig) and TupleConfig is not ListConfig:
        return "tuple"
    if isinstance(v, ListConfig):
        return "list"
    return type(v).__name__


def _check_override_type(key: str, old: Any, new: Any) -> None:
    """Raise TypeError when ``new`` cannot replace ``old`` (see apply_overrides)."""
    if old is None or new is None:
        return
    if isinstance(old, str) and old.startswith("${"):  # interpolation: any value can replace it
        return
    ok: bool
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
    elif isinstance(old, str):
        ok = isinstance(new, str)
    elif isinstance(old, (ListConfig, TupleConfig, list, tuple)):
        ok = isinstance(new, (list, tuple))
    elif isinstance(old, (DictConfig, dict)):
        ok = isinstance(new, dict)
    elif key.split(".")[-1] == "_target_":
        ok = isinstance(new, str) or callable(new)
    else:
        ok = type(new) is type(old)
    if not ok:
        raise TypeError(
            f"Cannot override config key '{key}': it holds a {_type_name(old)} ({old!r}) "
            f"but the override gives a {_type_name(new)} ({new!r})."
        )


def _target_accepts(node: Any, name: str) -> bool:
    """Whether ``node`` is a LazyCall whose target takes a keyword argument ``name``
    (explicitly: a target with only ``**kwargs`` accepts nothing here, so typos still fail)."""
    if not isinstance(node, DictConfig) or "_target_" not in node.keys():
        return False
    target = node._get_node("_target_")._value()
    try:
        target = locate(target) if isinstance(target, str) else target
        params = inspect.signature(target).parameters
    except (ImportError, TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _override(cfg: Any, key: str, value: Any, text: Optional[str]) -> None:
    """Set existing ``key`` of ``cfg`` to ``value`` after checking its type (see apply_overrides)."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if isinstance(node, DictConfig):
            exists = part in node.keys()
        elif isinstance(node, _SEQ_CONFIGS):
            exists = part.isdigit() and int(part) < len(node)
        else:
            value_here = node._value() if hasattr(node, "_value") else node
            raise KeyError(
                f"Cannot override '{key}': '{'.'.join(parts[:i])}' is a "
                f"{_type_name(value_here)} ({value_here!r}), not a dict or list."
            )
        if not exists and i == len(parts) - 1 and _target_accepts(node, part):
            # A keyword argument of the LazyCall target left at its default, e.g.
            # model.test_score_thresh=0.1: add it (type-checked by the target at instantiate).
            node[part] = value
            return
        if not exists:
            siblings = _all_keys(node, ".".join(parts[:i]) + "." if i else "")
            siblings = [s for s in siblings if s.count(".") == i and not s.endswith("_target_")]
            close = difflib.get_close_matches(here, siblings, n=3, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(f"Cannot override '{key}': config has no key '{here}'.{hint}")
        idx = int(part) if isinstance(node, _SEQ_CONFIGS) else part
        if i < len(parts) - 1:
            node = node._get_node(idx)
            continue
        old_node = node._get_node(idx)
        old = old_node if isinstance(old_node, (DictConfig,) + _SEQ_CONFIGS) else old_node._value()
        if isinstance(old, DictConfig) and isinstance(value, dict):
            # merge key by key, so each key must exist and is type-checked
            for k, v in value.items():
                _override(cfg, f"{key}.{k}", v, None)
            return
        if (
            text is not None
            and isinstance(old, str)
            and not old.startswith("${")
            and not isinstance(value, (str, type(None)))
        ):
            value = text  # a str key keeps the text, e.g. output_dir=123
        _check_override_type(key, old, value)
        if part == "_target_" and isinstance(value, str):
            try:
                locate(value)
            except ImportError as e:
                raise ImportError(f"Cannot override '{key}': {e}") from e
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, TupleConfig) and isinstance(value, list):
            value = tuple(value)  # keep the container type, e.g. short_edge_length
        if isinstance(node, TupleConfig) and TupleConfig is not ListConfig:
            # tuples are immutable: replace the whole tuple in its parent
            items = list(OmegaConf.to_container(node, resolve=False))
            items[idx] = value
            _override(cfg, ".".join(parts[:-1]), tuple(items), None)
            return
        node[idx] = value


class LazyConfig:
    """Load, save, override and print omegaconf configs made of LazyCall nodes."""

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
        filename = os.fspath(filename)
        ext = os.path.splitext(filename)[1]
        if ext not in (".py", ".yaml", ".yml"):
            raise ValueError(f"Config file {filename} has to be a .py, .yaml or .yml file.")
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"Config file {filename} does not exist (cwd: {os.getcwd()}).")
        if ext == ".py":
            code = _compile_config(filename)
            namespace: Dict[str, Any] = {
                "__file__": filename,
                "__name__": _random_package_name(filename),
            }
            namespace["__package__"] = namespace["__name__"]
            with _patch_import():
                exec(code, namespace)
            ret: Any = namespace
        else:
            with open(filename, encoding="utf-8") as f:
                obj = yaml.load(f, Loader=_Loader)
            ret = OmegaConf.create(obj if obj is not None else {}, flags={"allow_objects": True})

        if keys is not None:
            missing = [k for k in ([keys] if isinstance(keys, str) else keys) if k not in ret]
            if missing:
                raise KeyError(f"Config file {filename} does not define {', '.join(missing)}.")
            if isinstance(keys, str):
                return _cast_to_config(ret[keys])
            return tuple(_cast_to_config(ret[k]) for k in keys)
        if ext == ".py":
            ret = DictConfig(
                {
                    name: _cast_to_config(value)
                    for name, value in ret.items()
                    if isinstance(value, (DictConfig, ListConfig, dict)) and not name.startswith("_")
                },
                flags={"allow_objects": True},
            )
        return ret

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Write ``cfg`` as YAML that :meth:`load` reads back to an equal config.

        ``_target_`` callables are written as their import path, other importable
        classes and functions (``block_class=BasicBlock``) as ``!!python/name:``
        import paths that load back as the objects. Values YAML cannot
        hold (lambdas, local functions, arbitrary objects, ``_target_`` that cannot be
        imported back) are reported by key path in one warning and written as the
        string ``"<unserializable> TYPE: NAME"`` so the file still shows them; such a
        config loads, but those keys must be set again before ``instantiate``. If
        ``cloudpickle`` is installed, a complete pickle is also written to
        ``filename + ".pkl"`` in that case.
        """
        container = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
        bad: List[str] = []
        data = _yaml_safe(container, "", bad)
        dumped = yaml.dump(
            data, Dumper=_Dumper, default_flow_style=None, allow_unicode=True, width=9999, sort_keys=False
        )
        with open(filename, "w", encoding="utf-8") as f:
            f.write(dumped)
        if bad:
            msg = (
                f"Config saved to {filename}, but these keys hold values YAML cannot represent "
                f"and were written as '{_UNSERIALIZABLE} ...' strings: {', '.join(bad)}. "
                "Use LazyCall nodes or import paths instead to make the config reloadable."
            )
            try:
                import cloudpickle  # optional
            except ImportError:
                cloudpickle = None
            if cloudpickle is not None:
                with open(filename + ".pkl", "wb") as f:
                    cloudpickle.dump(cfg, f)
                msg += f" A complete copy was pickled to {filename}.pkl."
            warnings.warn(msg, UserWarning, stacklevel=2)

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
        for o in overrides:
            if "=" not in o:
                raise ValueError(f"Override {o!r} must have the form key=value, e.g. train.max_iter=100.")
            key, text = o.split("=", 1)
            key = key.strip()
            if key.startswith("+") or key.startswith("~"):
                raise ValueError(f"Override {o!r}: adding (+) or deleting (~) keys is not supported.")
            text = text.strip()
            _override(cfg, key, _parse_override_value(text), text)
        return cfg

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
        return _PyWriter().write(cfg, prefix)


class _PyWriter:
    """Renders a config as Python source (see LazyConfig.to_py)."""

    WIDTH = 88

    def __init__(self):
        self.imports: Dict[str, Tuple[str, str]] = {}  # local name -> (module, name)

    def _name_for(self, obj: Any) -> Optional[str]:
        """Add an import for ``obj`` (a callable or its dotted path); return the expression naming it."""
        path = obj if isinstance(obj, str) else _target_string(obj)
        if path is None:
            return None
        try:
            locate(path)
        except ImportError:
            return None
        module_name, attrs = self._split(path)
        if module_name is None:
            return None
        first = attrs[0]
        local, n = first, 1
        while local in self.imports and self.imports[local] != (module_name, first):
            n += 1
            local = f"{first}_{n}"
        self.imports[local] = (module_name, first)
        return ".".join([local] + attrs[1:])

    @staticmethod
    def _split(path: str) -> Tuple[Optional[str], List[str]]:
        """``"a.b.C.m"`` -> (``"a.b"``, [``"C"``, ``"m"``]) using the longest importable module."""
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            return ".".join(parts[:i]), parts[i:]
        return None, parts

    def _parts(self, obj: Any) -> Optional[Tuple[str, List[Tuple[str, Any]], str]]:
        """(opener, [(item prefix, child)], closer) for containers; None for leaves."""
        if isinstance(obj, abc.Mapping):
            target = obj.get("_target_")
            rest = [(k, v) for k, v in obj.items() if k != "_target_"]
            if "_target_" in obj:
                if isinstance(target, abc.Mapping):
                    name = self.flat(target)
                else:
                    name = self._name_for(target)
                    if name is None:
                        name = repr(target) if isinstance(target, str) else self.leaf(target)
                self.imports.setdefault("L", ("d2lite.config", "LazyCall"))
                opener = f"L({name})("
            else:
                opener = "dict("
            ident = [(k, v) for k, v in rest if isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)]
            if len(ident) == len(rest):
                return opener, [(f"{k}=", v) for k, v in rest], ")"
            if "_target_" not in obj:
                return "{", [(f"{k!r}: ", v) for k, v in rest], "}"
            ident_keys = {k for k, _ in ident}
            odd = {k: v for k, v in rest if k not in ident_keys}
            return opener, [(f"{k}=", v) for k, v in ident] + [("**", odd)], ")"
        if isinstance(obj, list):
            return "[", [("", v) for v in obj], "]"
        if isinstance(obj, tuple):
            return "(", [("", v) for v in obj], ",)" if len(obj) == 1 else ")"
        return None

    def leaf(self, obj: Any) -> str:
        if isinstance(obj, float) and not math.isfinite(obj):
            return f"float({str(obj)!r})"
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return repr(obj)
        if callable(obj):
            name = self._name_for(obj)
            if name is not None:
                return name
        return repr(f"{_UNSERIALIZABLE} {type(obj).__name__}: {_short_repr(obj)}")

    def flat(self, obj: Any) -> str:
        parts = self._parts(obj)
        if parts is None:
            return self.leaf(obj)
        opener, items, closer = parts
        body = ", ".join(prefix + self.flat(v) for prefix, v in items)
        return opener + body + (")" if closer == ",)" and len(items) != 1 else closer)

    def fmt(self, obj: Any, indent: int, col: int) -> str:
        """Source for ``obj`` starting at column ``col``; continuation lines indented by ``indent``."""
        one = self.flat(obj)
        parts = self._parts(obj)
        if parts is None or col + len(one) <= self.WIDTH or not parts[1]:
            return one
        opener, items, closer = parts
        pad = " " * (indent + 4)
        lines = [opener]
        for prefix, v in items:
            lines.append(pad + prefix + self.fmt(v, indent + 4, indent + 4 + len(prefix)) + ",")
        lines.append(" " * indent + closer.lstrip(","))
        return "\n".join(lines)

    def write(self, cfg: Any, prefix: str) -> str:
        data = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
        if not isinstance(data, abc.Mapping):
            raise TypeError(f"to_py expects a dict-like config, got {type(cfg).__name__}.")
        body = []
        for k, v in data.items():
            lhs = f"{prefix}{k} = "
            body.append(lhs + self.fmt(v, 0, len(lhs)))
        by_module: Dict[str, List[str]] = {}
        for local, (module, name) in self.imports.items():
            by_module.setdefault(module, []).append(name if local == name else f"{name} as {local}")
        lines = []
        for module in sorted(by_module):
            names = sorted(by_module[module], key=str.lower)
            line = f"from {module} import {', '.join(names)}"
            if len(line) > self.WIDTH:
                line = f"from {module} import (\n" + "".join(f"    {n},\n" for n in names) + ")"
            lines.append(line)
        return "\n".join(lines) + ("\n\n" if lines else "") + "\n".join(body) + "\n"
