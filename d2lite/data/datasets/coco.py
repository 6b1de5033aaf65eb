"""COCO-format json <-> detectron2 dataset dicts (boxes only)."""
import contextlib
import datetime
import io
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np

from d2lite.structures import Boxes, BoxMode
from d2lite.utils.file_io import PathManager

from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_coco_json", "convert_to_coco_dict", "convert_to_coco_json", "register_coco_instances"]

logger = logging.getLogger(__name__)


def _read_coco_api(json_file: str):
    """Parse ``json_file`` into a pycocotools ``COCO`` object, with errors naming the file."""
    from pycocotools.coco import COCO

    json_file = PathManager.get_local_path(json_file)
    try:
        with PathManager.open(json_file, "r") as f:
            dataset = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"COCO annotation file not found: '{json_file}'.") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"Malformed JSON in COCO annotation file '{json_file}': {e}") from e
    if not isinstance(dataset, dict):
        raise ValueError(
            f"COCO annotation file '{json_file}' must contain a JSON object, got {type(dataset).__name__}."
        )
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(
                f"COCO annotation file '{json_file}' has no '{key}' list "
                f"(top-level keys: {sorted(dataset.keys())})."
            )
    if "annotations" in dataset and not isinstance(dataset["annotations"], list):
        raise ValueError(f"'annotations' in COCO annotation file '{json_file}' must be a list.")
    coco_api = COCO()
    coco_api.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_api.createIndex()
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"COCO annotation file '{json_file}' is malformed (missing or wrong field {e!r} "
            "in an image/annotation/category entry)."
        ) from e
    return coco_api


def _invalid_box_reason(bbox: Any, height: float, width: float) -> Optional[str]:
    """Why an XYWH box cannot be used (None if it is fine)."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "non-finite"
    if w <= 0 or h <= 0:
        return "non-positive width/height"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside the image"
    return None


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[List[str]] = None,
) -> List[Dict[str, Any]]:
    """Load a COCO instances json into detectron2's standard dataset dicts.

    Args:
        json_file: path to the COCO instances json.
        image_root: folder the images' ``file_name`` are relative to.
        dataset_name: if given, the metadata of this dataset gets ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` and category ids are mapped to the
            contiguous range ``[0, #categories)`` in sorted-id order (e.g. ids 1, 5, 90 ->
            0, 1, 2). If None, category ids are kept as in the file (as detectron2).
        extra_annotation_keys: annotation fields to keep besides
            "iscrowd", "bbox", "category_id" (e.g. ["segmentation", "area"]).

    Returns:
        list[dict]: one dict per image with "file_name", "height", "width", "image_id"
        and "annotations" (list of dicts with "bbox" in XYWH absolute pixels,
        "bbox_mode" = BoxMode.XYWH_ABS, "category_id", "iscrowd").

    Annotations whose box has non-positive width/height, is not finite or lies fully
    outside its image are dropped, with one warning giving their number.
    """
    coco_api = _read_coco_api(json_file)

    id_map = None
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        cat_ids = sorted(coco_api.getCatIds())
        cats = coco_api.loadCats(cat_ids)
        thing_classes = [c["name"] for c in sorted(cats, key=lambda x: x["id"])]
        meta.thing_classes = thing_classes
        if not cat_ids or not (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids)):
            if "coco" not in dataset_name:
                logger.info(
                    "Category ids in annotations of '%s' are not in [1, #categories]! "
                    "They are mapped to contiguous ids [0, %d) in sorted order.",
                    dataset_name, len(cat_ids),
                )
        id_map = {v: i for i, v in enumerate(cat_ids)}
        meta.thing_dataset_id_to_contiguous_id = id_map

    img_ids = sorted(coco_api.imgs.keys())
    imgs = coco_api.loadImgs(img_ids)
    anns = [coco_api.imgToAnns[img_id] for img_id in img_ids]
    total_num_anns = sum(len(x) for x in anns)
    ann_ids = [ann["id"] for anns_per_image in anns for ann in anns_per_image if "id" in ann]
    if len(set(ann_ids)) != len(ann_ids):
        raise ValueError(f"Annotation ids in '{json_file}' are not unique!")
    logger.info("Loaded %d images in COCO format from %s", len(imgs), json_file)

    ann_keys = ["iscrowd", "bbox", "category_id"] + (extra_annotation_keys or [])
    dataset_dicts = []
    num_dropped: Dict[str, int] = {}
    for img_dict, anno_dict_list in zip(imgs, anns):
        for key in ("file_name", "height", "width"):
            if key not in img_dict:
                raise ValueError(
                    f"Image entry id={img_dict.get('id')} in '{json_file}' has no '{key}'."
                )
        record = {
            "file_name": os.path.join(image_root, img_dict["file_name"]),
            "height": img_dict["height"],
            "width": img_dict["width"],
        }
        image_id = record["image_id"] = img_dict["id"]
        objs = []
        for anno in anno_dict_list:
            if anno.get("ignore", 0) != 0:
                raise ValueError(
                    f'"ignore" in COCO json file is not supported (annotation id={anno.get("id")} '
                    f"in '{json_file}')."
                )
            obj = {key: anno[key] for key in ann_keys if key in anno}
            bbox = obj.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(
                    f"Annotation id={anno.get('id')} of image id={image_id} in '{json_file}' has "
                    f"bbox={bbox!r}; expected 4 numbers [x, y, width, height]."
                )
            if "category_id" not in obj:
                raise ValueError(
                    f"Annotation id={anno.get('id')} of image id={image_id} in '{json_file}' "
                    "has no 'category_id'."
                )
            reason = _invalid_box_reason(bbox, record["height"], record["width"])
            if reason is not None:
                num_dropped[reason] = num_dropped.get(reason, 0) + 1
                continue
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map:
                annotation_category_id = obj["category_id"]
                try:
                    obj["category_id"] = id_map[annotation_category_id]
                except KeyError as e:
                    raise KeyError(
                        f"Encountered category_id={annotation_category_id} (annotation "
                        f"id={anno.get('id')}) but this id does not exist in 'categories' of "
                        f"'{json_file}'."
                    ) from e
            objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)

    if num_dropped:
        logger.warning(
            "Dropped %d of %d annotations in '%s' with unusable boxes (%s).",
            sum(num_dropped.values()), total_num_anns, json_file,
            ", ".join(f"{n} {r}" for r, n in sorted(num_dropped.items())),
        )
    return dataset_dicts


def convert_to_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """Convert a registered dataset to a COCO-format dict (category ids mapped back to
    the dataset ids through ``thing_dataset_id_to_contiguous_id`` when present)."""
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)

    if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        reverse_id_mapping = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}

        def reverse_id_mapper(contiguous_id: int) -> int:
            return reverse_id_mapping[contiguous_id]

    else:

        def reverse_id_mapper(contiguous_id: int) -> int:
            return contiguous_id

    categories = [
        {"id": reverse_id_mapper(i), "name": name} for i, name in enumerate(metadata.thing_classes)
    ]

    logger.info("Converting dataset dicts into COCO format")
    coco_images = []
    coco_annotations = []
    for image_id, image_dict in enumerate(dataset_dicts):
        coco_image = {
            "id": image_dict.get("image_id", image_id),
            "width": int(image_dict["width"]),
            "height": int(image_dict["height"]),
            "file_name": str(image_dict["file_name"]),
        }
        coco_images.append(coco_image)
        for annotation in image_dict.get("annotations", []):
            bbox = annotation["bbox"]
            if isinstance(bbox, np.ndarray):
                if bbox.ndim != 1:
                    raise ValueError(f"bbox has to be 1-dimensional. Got shape={bbox.shape}.")
                bbox = bbox.tolist()
            if len(bbox) != 4:
                raise ValueError(f"bbox has to have length 4, got {bbox} in {image_dict['file_name']}.")
            from_bbox_mode = annotation["bbox_mode"]
            bbox_xyxy = BoxMode.convert(bbox, from_bbox_mode, BoxMode.XYXY_ABS)
            area = Boxes([bbox_xyxy]).area()[0].item()
            bbox_xywh = BoxMode.convert(bbox, from_bbox_mode, BoxMode.XYWH_ABS)
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": coco_image["id"],
                    "bbox": [round(float(x), 3) for x in bbox_xywh],
                    "area": float(area),
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                    "category_id": int(reverse_id_mapper(annotation["category_id"])),
                }
            )

    logger.info(
        "Conversion finished, #images: %d, #annotations: %d", len(coco_images), len(coco_annotations)
    )
    info = {
        "date_created": str(datetime.datetime.now()),
        "description": "Automatically generated COCO json file for d2lite.",
    }
    coco_dict = {"info": info, "images": coco_images, "categories": categories, "licenses": None}
    if len(coco_annotations) > 0:
        coco_dict["annotations"] = coco_annotations
    return coco_dict


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write :func:`convert_to_coco_dict` of ``dataset_name`` to ``output_file``; with
    ``allow_cached`` an existing file is reused."""
    PathManager.mkdirs(os.path.dirname(output_file) or ".")
    if PathManager.exists(output_file) and allow_cached:
        logger.warning(
            "Using previously cached COCO format annotations at '%s'. You need to clear the cache "
            "file if your dataset has been modified.", output_file,
        )
        return
    logger.info("Converting annotations of dataset '%s' to COCO format ...", dataset_name)
    coco_dict = convert_to_coco_dict(dataset_name)
    logger.info("Caching COCO format annotations at '%s' ...", output_file)
    tmp_file = output_file + f".tmp{os.getpid()}"
    with PathManager.open(tmp_file, "w") as f:
        json.dump(coco_dict, f)
    shutil.move(tmp_file, output_file)


def register_coco_instances(name: str, metadata: Dict[str, Any], json_file: str, image_root: str) -> None:
    """Register a COCO-format instances dataset (loaded lazily by :func:`load_coco_json`).

    Args:
        name: dataset name, e.g. "my_dataset_train".
        metadata: extra metadata (may be empty).
        json_file: path to the COCO json.
        image_root: folder of the images.
    """
    if not isinstance(name, str):
        raise TypeError(f"Dataset name must be a str, got {type(name)}.")
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
