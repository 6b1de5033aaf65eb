"""Serialising configs: YAML that loads back to an equal config, and Python source.

The facades are :meth:`d2lite.config.LazyConfig.save` and :meth:`~d2lite.config.LazyConfig.to_py`.
"""

import importlib
import inspect
import keyword
import math
import warnings
from collections import abc
from typing import Any, Dict, List, Optional, Tuple

import yaml
from omegaconf import OmegaConf

from d2lite.utils.registry import _convert_target_to_string, _same, locate

__all__ = ["save_yaml", "to_yaml", "to_py", "YAMLLoader"]


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


class YAMLLoader(yaml.SafeLoader):
    """Safe YAML loader that reads ``!!python/tuple`` back as a tuple (and nothing unsafe)."""


_Dumper.add_representer(tuple, lambda dumper, data: dumper.represent_sequence(_TUPLE_TAG, data, flow_style=True))
YAMLLoader.add_constructor(_TUPLE_TAG, lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_Dumper.add_representer(_ImportPath, lambda dumper, data: dumper.represent_scalar(_NAME_TAG + str(data), ""))
# Only imports the named object (as a `_target_` string would), never calls anything.
YAMLLoader.add_multi_constructor(_NAME_TAG, lambda loader, suffix, node: locate(suffix))


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


def _dump_yaml(cfg: Any) -> Tuple[str, List[str]]:
    """(YAML text of ``cfg``, key paths of values YAML cannot hold)."""
    container = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    bad: List[str] = []
    data = _yaml_safe(container, "", bad)
    dumped = yaml.dump(data, Dumper=_Dumper, default_flow_style=None, allow_unicode=True, width=9999, sort_keys=False)
    return dumped, bad


def to_yaml(cfg: Any) -> str:
    """See :meth:`d2lite.config.LazyConfig.to_yaml`."""
    dumped, bad = _dump_yaml(cfg)
    if bad:
        warnings.warn(
            f"These keys hold values YAML cannot represent and were written as '{_UNSERIALIZABLE} ...' "
            f"strings: {', '.join(bad)}. Use LazyCall nodes or import paths instead to make the config reloadable.",
            UserWarning,
            stacklevel=3,
        )
    return dumped


def save_yaml(cfg: Any, filename: str) -> None:
    """See :meth:`d2lite.config.LazyConfig.save`."""
    dumped, bad = _dump_yaml(cfg)
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


def to_py(cfg: Any, prefix: str = "cfg.") -> str:
    """See :meth:`d2lite.config.LazyConfig.to_py`."""
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
