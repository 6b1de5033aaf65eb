"""Locate and load the LazyConfig files under ``configs/``.

A regular install copies ``configs/`` into ``d2lite/model_zoo/configs``; an
editable install (``pip install -e .``) reads the repository's ``configs/``.
"""

from pathlib import Path

_PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
_REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config_root() -> Path:
    for root in (_PACKAGE_CONFIGS, _REPO_CONFIGS):
        if root.is_dir():
            return root
    raise FileNotFoundError(
        f"d2lite's configs were not found at {_PACKAGE_CONFIGS} or {_REPO_CONFIGS}; "
        "reinstall d2lite with `pip install -e .` from the repository root."
    )


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, e.g. ``"COCO-Detection/retinanet_R_50_FPN_1x.py"``."""
    root = _config_root()
    path = root / config_path
    if not path.is_file():
        available = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "common" not in p.parts)
        raise FileNotFoundError(
            f"{config_path} is not a config shipped with d2lite (looked in {root}). "
            f"Available: {', '.join(available) or 'none'}"
        )
    return str(path)


def get_config(config_path: str):
    """Load a shipped LazyConfig file and return its root DictConfig."""
    from d2lite.config import LazyConfig

    return LazyConfig.load(get_config_file(config_path))
