"""Loading config files: Python files executed with config-aware relative imports, and YAML.

The facade is :class:`d2lite.config.LazyConfig` (``LazyConfig.load``); this module holds
the mechanics: config files run in a private namespace (never in ``sys.modules``), and a
relative import inside a config file runs the named config file afresh.
"""

import builtins
import importlib.machinery
import importlib.util
import os
import uuid
from contextlib import contextmanager
from typing import Any, Dict, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from .serialization import YAMLLoader

__all__ = ["load_config_file"]


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


def load_config_file(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
    """See :meth:`d2lite.config.LazyConfig.load`."""
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
            obj = yaml.load(f, Loader=YAMLLoader)
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
