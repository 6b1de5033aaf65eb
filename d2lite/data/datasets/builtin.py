"""Register the built-in datasets on import (as detectron2 does).

COCO 2017 is expected under ``$D2LITE_DATASETS`` (default ``./datasets``)::

    coco/annotations/instances_{train,val}2017.json
    coco/{train,val}2017/

Files are only read when ``DatasetCatalog.get(name)`` is called. The synthetic
``shapes_train`` / ``shapes_val`` are generated under ``<root>/shapes`` on first use,
``shapes_eval`` (a second generator, for evaluation only) under ``<root>/shapes_eval``.
"""
import os
from typing import Any, Dict, List

from d2lite.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import _get_builtin_metadata
from .coco import load_coco_json
from .shapes import register_all_shapes
from .shapes_eval import register_shapes_eval

__all__ = ["register_all_coco", "register_all_shapes", "register_shapes_eval"]

_PREDEFINED_SPLITS_COCO = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}


def _load_builtin_coco(name: str, root: str, json_file: str, image_root: str) -> List[Dict[str, Any]]:
    if not PathManager.exists(json_file):
        raise FileNotFoundError(
            f"Dataset '{name}' needs its annotation file '{json_file}', which does not exist. "
            f"Built-in datasets are looked up under $D2LITE_DATASETS (now '{root}'); set "
            "D2LITE_DATASETS to the folder that contains coco/annotations and coco/{train,val}2017."
        )
    if not PathManager.isdir(image_root):
        raise FileNotFoundError(
            f"Dataset '{name}' needs its image folder '{image_root}', which does not exist. "
            f"Built-in datasets are looked up under $D2LITE_DATASETS (now '{root}')."
        )
    return load_coco_json(json_file, image_root, name)


def register_all_coco(root: str) -> None:
    """Register coco_2017_{train,val,val_100} with files under ``root``."""
    for name, (image_root, json_file) in _PREDEFINED_SPLITS_COCO.items():
        json_path = os.path.join(root, json_file)
        image_path = os.path.join(root, image_root)
        DatasetCatalog.register(
            name,
            lambda n=name, j=json_path, i=image_path: _load_builtin_coco(n, root, j, i),
        )
        MetadataCatalog.get(name).set(
            json_file=json_path,
            image_root=image_path,
            evaluator_type="coco",
            **_get_builtin_metadata("coco"),
        )


def _default_root() -> str:
    return os.path.expanduser(os.getenv("D2LITE_DATASETS", "datasets"))


if __name__.endswith(".builtin"):
    _root = _default_root()
    register_all_coco(_root)
    register_all_shapes(_root)
    register_shapes_eval(_root)
