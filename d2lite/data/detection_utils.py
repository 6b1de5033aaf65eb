"""Helpers shared by dataset mappers: image reading, annotation transforms, Instances."""

import logging
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from d2lite.structures import Boxes, BoxMode, Instances
from d2lite.utils.file_io import PathManager

from . import transforms as T
from .catalog import MetadataCatalog

__all__ = [
    "SizeMismatchError",
    "convert_PIL_to_numpy",
    "read_image",
    "check_image_size",
    "transform_instance_annotations",
    "annotations_to_instances",
    "filter_empty_instances",
    "gen_crop_transform_with_instance",
    "build_augmentation",
    "build_transform_gen",
    "check_metadata_consistency",
]

logger = logging.getLogger(__name__)


class SizeMismatchError(ValueError):
    """The loaded image's size differs from the size recorded in its annotation."""


def convert_PIL_to_numpy(image: Image.Image, format: str = None) -> np.ndarray:
    """Convert a PIL image to a numpy array in ``format``.

    Args:
        image: a PIL image.
        format: "BGR", "RGB", "L" or any PIL mode; None keeps the image's own mode.

    Returns:
        (H, W, C) uint8 array ((H, W, 1) for "L").
    """
    if format is not None:
        conversion_format = "RGB" if format == "BGR" else format
        image = image.convert(conversion_format)
    image = np.asarray(image)
    if format == "L":
        image = np.expand_dims(image, -1)
    elif format == "BGR":
        image = image[:, :, ::-1]
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip the image according to its EXIF orientation tag (if any)."""
    try:
        orientation = image.getexif().get(0x0112, 1)  # 0x0112 = EXIF Orientation
    except Exception as e:  # malformed EXIF block: keep the pixels as stored, but say so
        logger.warning("Ignoring unreadable EXIF data of %s: %s", getattr(image, "filename", image), e)
        return image
    if orientation in (None, 1):
        return image
    transposed = ImageOps.exif_transpose(image)
    return transposed if transposed is not None else image


def read_image(file_name: str, format: str = None) -> np.ndarray:
    """Read an image (through PathManager) with its EXIF orientation applied.

    Args:
        file_name: image path or URI.
        format: "BGR" (default of d2lite models), "RGB", "L", or None for the file's mode.

    Returns:
        (H, W, C) uint8 array in ``format`` ((H, W, 1) for "L").

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        OSError: the file is not a readable image (the message names it).
    """
    try:
        f = PathManager.open(file_name, "rb")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file not found: '{file_name}'.") from e
    with f:
        try:
            image = Image.open(f)
            image = _apply_exif_orientation(image)
            return convert_PIL_to_numpy(image, format)
        except (OSError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise OSError(f"Cannot read image file '{file_name}': {e}") from e


def check_image_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """Check that ``image`` (H, W, ...) matches the "height"/"width" of ``dataset_dict``;
    fill them in when absent.

    Raises:
        SizeMismatchError: naming the file, the expected and the actual size.
    """
    if "width" in dataset_dict or "height" in dataset_dict:
        image_wh = (image.shape[1], image.shape[0])
        expected_wh = (dataset_dict.get("width"), dataset_dict.get("height"))
        if image_wh != expected_wh:
            name = dataset_dict.get("file_name", "<unknown file>")
            hint = ""
            if image_wh == expected_wh[::-1]:
                hint = (
                    " The sizes are transposed: the image probably has an EXIF orientation tag; "
                    "d2lite applies it when reading, so the annotation should use the rotated size."
                )
            raise SizeMismatchError(
                f"Mismatched image shape for image '{name}': got (width, height) = {image_wh}, "
                f"expected {expected_wh} from the annotation. Please check the width/height in "
                f"your annotation.{hint}"
            )
    if "width" not in dataset_dict:
        dataset_dict["width"] = image.shape[1]
    if "height" not in dataset_dict:
        dataset_dict["height"] = image.shape[0]


def transform_instance_annotations(
    annotation: Dict[str, Any],
    transforms: Union[T.Transform, T.TransformList, Sequence[T.Transform]],
    image_size: Tuple[int, int],
    *,
    keypoint_hflip_indices=None,
) -> Dict[str, Any]:
    """Apply ``transforms`` to one annotation's box (in place).

    The box is converted to XYXY_ABS, transformed (via its 4 corners), then clipped
    to ``image_size`` = (h, w) of the transformed image. Returns the annotation with
    "bbox" as a (4,) array and "bbox_mode" = BoxMode.XYXY_ABS.
    """
    if keypoint_hflip_indices is not None:
        raise ValueError("d2lite does not support keypoints (keypoint_hflip_indices must be None).")
    if isinstance(transforms, (tuple, list)):
        transforms = T.TransformList(transforms)
    bbox = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    bbox = transforms.apply_box(np.array([bbox], dtype=np.float64))[0].clip(min=0)
    image_size = tuple(image_size)
    annotation["bbox"] = np.minimum(bbox, list(image_size + image_size)[::-1])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS
    return annotation


def annotations_to_instances(
    annos: List[Dict[str, Any]], image_size: Tuple[int, int], mask_format: str = "polygon"
) -> Instances:
    """Build the ground-truth :class:`Instances` of one image.

    Args:
        annos: annotation dicts with "bbox", "bbox_mode", "category_id".
        image_size: (h, w) of the image.

    Returns:
        Instances with ``gt_boxes`` (Boxes, (N, 4) XYXY_ABS float32) and
        ``gt_classes`` (int64 tensor, (N,)).
    """
    if len(annos):
        boxes = np.stack(
            [
                np.asarray(BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64)
                for obj in annos
            ]
        )
    else:
        boxes = np.zeros((0, 4))
    target = Instances(image_size)
    target.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    classes = [int(obj["category_id"]) for obj in annos]
    target.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
):
    """Remove instances whose box has width or height <= ``box_threshold``.

    Returns the filtered Instances (and the boolean keep-mask if ``return_mask``).
    """
    if not by_box:
        m = torch.ones(len(instances), dtype=torch.bool)
    else:
        m = instances.gt_boxes.nonempty(threshold=box_threshold)
    if return_mask:
        return instances[m], m
    return instances[m]


def gen_crop_transform_with_instance(
    crop_size: Tuple[int, int], image_size: Tuple[int, int], instance: Dict[str, Any]
) -> T.CropTransform:
    """A random :class:`CropTransform` of ``crop_size`` whose region contains the centre
    of ``instance``'s box (as detectron2's, which it draws in the same order: y0, then x0,
    with numpy's global RNG).

    Args:
        crop_size: (h, w) of the crop in pixels, at most ``image_size``.
        image_size: (h, w) of the image in pixels.
        instance: one annotation dict in detectron2's dataset format ("bbox", "bbox_mode").

    Returns:
        ``CropTransform(x0, y0, w, h)`` with integer ``x0, y0``, inside the image, and
        ``x0 <= cx <= x0 + w``, ``y0 <= cy <= y0 + h`` for the box centre ``(cx, cy)``
        (edges included; detectron2's may leave a fractional centre up to one pixel out).

    Raises:
        ValueError: the crop is larger than the image, or the box centre lies outside it
            (the message names the sizes and the box).
    """
    crop_h, crop_w = (int(x) for x in crop_size)
    img_h, img_w = (int(x) for x in image_size)
    if not (0 < crop_h <= img_h and 0 < crop_w <= img_w):
        raise ValueError(
            f"gen_crop_transform_with_instance: crop size (h, w) = {(crop_h, crop_w)} must be positive "
            f"and fit in the image of size (h, w) = {(img_h, img_w)}."
        )
    x0, y0, x1, y1 = BoxMode.convert(list(instance["bbox"]), instance["bbox_mode"], BoxMode.XYXY_ABS)
    center_yx = np.array([(y0 + y1) * 0.5, (x0 + x1) * 0.5])
    if not (0 <= center_yx[0] <= img_h and 0 <= center_yx[1] <= img_w):
        raise ValueError(
            f"gen_crop_transform_with_instance: the centre (x, y) = {tuple(center_yx[::-1].tolist())} of the "
            f"annotation box {list(instance['bbox'])} (mode {instance['bbox_mode']}) is outside the image "
            f"of size (h, w) = {(img_h, img_w)}."
        )
    crop = np.array([crop_h, crop_w])
    # the crop [start, start + size] holds the centre c: c - size <= start <= c; and it is
    # inside the image: 0 <= start <= image - size. Non-empty since size >= 1 and 0 <= c <= image.
    low = np.maximum(np.ceil(center_yx - crop), 0).astype(np.int64)
    high = np.minimum(np.array([img_h, img_w]) - crop, np.floor(center_yx)).astype(np.int64)
    start_y = np.random.randint(low[0], high[0] + 1)
    start_x = np.random.randint(low[1], high[1] + 1)
    return T.CropTransform(int(start_x), int(start_y), crop_w, crop_h)


def build_augmentation(
    is_train: bool,
    *,
    min_size_train: Sequence[int] = (800,),
    max_size_train: int = 1333,
    min_size_train_sampling: str = "choice",
    min_size_test: int = 800,
    max_size_test: int = 1333,
    random_flip: str = "horizontal",
) -> List[T.Augmentation]:
    """The default augmentations: ResizeShortestEdge (+ RandomFlip for training).

    detectron2 reads these values from ``cfg.INPUT.*``; here they are keyword arguments
    with detectron2's defaults (``DatasetMapper.from_config`` maps a config to them).
    ``random_flip`` is "horizontal", "vertical" or "none".
    """
    if is_train:
        augmentation: List[T.Augmentation] = [
            T.ResizeShortestEdge(min_size_train, max_size_train, min_size_train_sampling)
        ]
        if random_flip not in ("horizontal", "vertical", "none"):
            raise ValueError(f"random_flip must be 'horizontal', 'vertical' or 'none', got '{random_flip}'.")
        if random_flip != "none":
            augmentation.append(
                T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
            )
    else:
        augmentation = [T.ResizeShortestEdge(min_size_test, max_size_test, "choice")]
    return augmentation


build_transform_gen = build_augmentation


def check_metadata_consistency(key: str, dataset_names: List[str]) -> None:
    """Check that metadata ``key`` is the same in all ``dataset_names`` (when they have it)."""
    if len(dataset_names) == 0:
        return
    entries_per_dataset = [getattr(MetadataCatalog.get(d), key) for d in dataset_names]
    for idx, entry in enumerate(entries_per_dataset):
        if entry != entries_per_dataset[0]:
            raise ValueError(
                f"Metadata '{key}' of dataset '{dataset_names[idx]}' is {entry}, but of dataset "
                f"'{dataset_names[0]}' it is {entries_per_dataset[0]}; datasets trained together "
                "must have the same value."
            )
