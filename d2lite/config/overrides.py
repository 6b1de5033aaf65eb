"""Command-line overrides ``a.b.c=value``: parsed, key-checked and type-checked.

The facade is :meth:`d2lite.config.LazyConfig.apply_overrides`.
"""

import ast
import difflib
import inspect
from typing import Any, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from d2lite.utils.registry import locate

try:  # omegaconf >= 2.4 keeps tuples as (immutable) TupleConfig
    from omegaconf import TupleConfig
except ImportError:  # older omegaconf turns tuples into ListConfig
    TupleConfig = ListConfig

_SEQ_CONFIGS = (ListConfig, TupleConfig)

__all__ = ["apply_overrides"]


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


def apply_overrides(cfg: Any, overrides: List[str]) -> Any:
    """See :meth:`d2lite.config.LazyConfig.apply_overrides`."""
    for o in overrides:
        if "=" not in o:
            hint = " Command-line options such as --resume go before the overrides." if o.startswith("--") else ""
            raise ValueError(f"Override {o!r} must have the form key=value, e.g. train.max_iter=100.{hint}")
        key, text = o.split("=", 1)
        key = key.strip()
        if key.startswith("+") or key.startswith("~"):
            raise ValueError(f"Override {o!r}: adding (+) or deleting (~) keys is not supported.")
        text = text.strip()
        _override(cfg, key, _parse_override_value(text), text)
    return cfg
