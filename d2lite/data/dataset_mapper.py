"""DatasetMapper: dataset dict -> model input dict (read, augment, build Instances)."""

import copy
import logging
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from d2lite.config import configurable

from . import detection_utils as utils
from . import transforms as T

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper:
    """Map one dataset dict (detectron2 format) to what the model consumes.

    1. read the image from ``dataset_dict["file_name"]`` in ``image_format``;
    2. check its size against "height"/"width";
    3. apply ``augmentations`` to the image and the boxes;
    4. return the dict with "image" (uint8 tensor (C, H, W)) and, for training,
       "instances" (gt_boxes XYXY_ABS in the augmented image, gt_classes int64);
       crowd annotations and boxes that became empty are dropped.

    With ``crop_with_instance=True`` (detectron2's mapper did this when ``INPUT.CROP`` was
    on, before it became a plain augmentation), ``augmentations[0]`` must be a
    :class:`~d2lite.data.transforms.RandomCrop`: for a training image with annotations it
    draws the crop size, and the crop is placed so that the centre of one randomly chosen
    (non-crowd) annotation stays inside it
    (:func:`detection_utils.gen_crop_transform_with_instance`); the other augmentations
    follow. Boxes crossing the crop border are clipped to it, boxes left outside are
    dropped. Images without (non-crowd) annotations get the plain random crop.

    Box detection only: instance masks and keypoints are not supported.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        use_instance_mask: bool = False,
        use_keypoint: bool = False,
        instance_mask_format: str = "polygon",
        keypoint_hflip_indices: Optional[np.ndarray] = None,
        precomputed_proposal_topk: Optional[int] = None,
        recompute_boxes: bool = False,
        crop_with_instance: bool = False,
    ):
        """
        Args:
            is_train: training mode keeps annotations; inference drops them.
            augmentations: augmentations or deterministic transforms, applied in order.
            image_format: "BGR", "RGB" or "L" (see :func:`detection_utils.read_image`).
            use_instance_mask, use_keypoint, precomputed_proposal_topk, recompute_boxes:
                detectron2 arguments for masks/keypoints/proposals; d2lite supports only
                their default (off) values.
            crop_with_instance: place the leading RandomCrop of ``augmentations`` around
                an annotated instance when training (see the class docstring). Defaults to False.
        """
        if use_instance_mask or use_keypoint or recompute_boxes or precomputed_proposal_topk:
            raise ValueError(
                "d2lite's DatasetMapper supports box detection only: use_instance_mask, "
                "use_keypoint, recompute_boxes and precomputed_proposal_topk must be off."
            )
        if crop_with_instance and not (augmentations and isinstance(augmentations[0], T.RandomCrop)):
            first = augmentations[0] if augmentations else "nothing"
            raise ValueError(
                "DatasetMapper(crop_with_instance=True) needs a T.RandomCrop as augmentations[0] (it draws "
                f"the crop size); got {first}."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.crop_with_instance = crop_with_instance
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.use_keypoint = use_keypoint
        self.keypoint_hflip_indices = keypoint_hflip_indices
        self.proposal_topk = precomputed_proposal_topk
        self.recompute_boxes = recompute_boxes
        mode = "training" if is_train else "inference"
        logger.info(f"[DatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True) -> Dict[str, Any]:
        """Arguments from a detectron2-style config (:func:`d2lite.config.get_cfg`):
        ``INPUT.{MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING, MIN_SIZE_TEST,
        MAX_SIZE_TEST, RANDOM_FLIP, FORMAT, CROP.{ENABLED, TYPE, SIZE, CROP_INSTANCE}}``, as detectron2's
        ``DatasetMapper.from_config``. A partial config (e.g. an omegaconf DictConfig with a
        few ``INPUT`` keys) takes detectron2's defaults for the missing keys.
        """

        def get(path: str) -> Any:
            node = cfg
            for key in path.split("."):
                try:
                    node = node[key] if isinstance(node, dict) or hasattr(node, "keys") else getattr(node, key)
                except (KeyError, AttributeError):
                    node = None
                    break
            if node is not None:
                return node
            from d2lite.config.defaults import _C

            return _select(_C, path)

        augs = utils.build_augmentation(
            is_train,
            min_size_train=tuple(get("INPUT.MIN_SIZE_TRAIN")),
            max_size_train=get("INPUT.MAX_SIZE_TRAIN"),
            min_size_train_sampling=get("INPUT.MIN_SIZE_TRAIN_SAMPLING"),
            min_size_test=get("INPUT.MIN_SIZE_TEST"),
            max_size_test=get("INPUT.MAX_SIZE_TEST"),
            random_flip=get("INPUT.RANDOM_FLIP"),
        )
        crop = is_train and get("INPUT.CROP.ENABLED")
        if crop:
            augs.insert(0, T.RandomCrop(get("INPUT.CROP.TYPE"), tuple(get("INPUT.CROP.SIZE"))))
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": get("INPUT.FORMAT"),
            # the key of AdelaiDet-style configs; detectron2's own crop is a plain RandomCrop
            "crop_with_instance": bool(crop and get("INPUT.CROP.CROP_INSTANCE")),
        }

    def _transform_annotations(self, dataset_dict: Dict[str, Any], transforms, image_shape) -> None:
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _augment(self, aug_input: T.AugInput, dataset_dict: Dict[str, Any]) -> T.TransformList:
        """Apply the augmentations to ``aug_input`` in place; return their transforms."""
        annos = [a for a in dataset_dict.get("annotations", ()) if a.get("iscrowd", 0) == 0]
        if not (self.crop_with_instance and self.is_train and annos):
            return self.augmentations(aug_input)
        random_crop, *rest = self.augmentations.augs
        image_size = aug_input.image.shape[:2]
        # detectron2's order of random draws: crop size, instance, crop position
        crop_size = random_crop.get_crop_size(image_size)
        instance = annos[np.random.choice(len(annos))]
        crop = utils.gen_crop_transform_with_instance(crop_size, image_size, instance)
        aug_input.transform(crop)
        return T.TransformList([crop, *T.AugmentationList(rest)(aug_input).transforms])

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict: one image's metadata in detectron2 dataset format.

        Returns:
            dict: the input dict plus "image" (uint8 (C, H, W)) and, when training,
            "instances"; "annotations" are removed.

        Raises:
            FileNotFoundError / OSError / SizeMismatchError naming the file and, when the
            dict carries "dataset_name", the dataset.
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified by code below
        file_name = dataset_dict.get("file_name", "<no file_name>")
        try:
            image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (OSError, utils.SizeMismatchError) as e:
            where = f" (dataset '{dataset_dict['dataset_name']}')" if "dataset_name" in dataset_dict else ""
            msg = f"{e} [while mapping image_id={dataset_dict.get('image_id')} file '{file_name}'{where}]"
            raise type(e)(msg) from e

        aug_input = T.AugInput(image)
        transforms = self._augment(aug_input, dataset_dict)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            for anno in dataset_dict["annotations"]:
                anno.pop("segmentation", None)
                anno.pop("keypoints", None)
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def _select(cfg: Any, path: str) -> Any:
    """``cfg.A.B.C`` for ``path="A.B.C"``."""
    for key in path.split("."):
        cfg = cfg[key]
    return cfg
