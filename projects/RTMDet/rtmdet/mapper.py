"""RTMDetDatasetMapper: a training mapper for mmdetection-style pipelines, including the
multi-image ones (:mod:`rtmdet.mix_transforms`)."""

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from d2lite.data import detection_utils as utils
from d2lite.data import stream
from d2lite.data import transforms as T
from d2lite.structures import Boxes, BoxMode, Instances

from .mix_transforms import CachedSample, StreamHistory
from .transforms import DetAugInput, SampleRejected, clip_boxes

__all__ = ["RTMDetDatasetMapper"]

logger = logging.getLogger(__name__)


class RTMDetDatasetMapper:
    """Map one dataset dict (detectron2 format) to a training input, through
    augmentations that may drop boxes, mix in other samples or reject the sample.

    1. read the image (``image_format``) and check its size against "height"/"width";
    2. take the non-crowd annotations as XYXY boxes and labels, skipping those
       mmdetection's COCO loader skips: width or height < ``min_box_size``, "area" <= 0,
       or no overlap with the image;
    3. draw the sample's seed from numpy's global generator (one draw; d2lite's training
       stream seeds it per sample position, other data-loader workers are seeded by
       ``worker_init_reset_seed``) and make ``np.random.default_rng(seed)``: every
       augmentation draws from it;
    4. apply ``augmentations`` to a :class:`~rtmdet.transforms.DetAugInput`; while a
       :class:`~d2lite.data.stream.TrainDataStream` maps the sample, the input carries a
       :class:`~rtmdet.mix_transforms.StreamHistory` (``aug_input.history``) from which the
       multi-image augmentations take the stream's earlier samples, so that a sample's
       augmentation depends only on (seed, position in the stream);
    5. return the dict with "image" (uint8 tensor (C, H, W)) and "instances"
       (gt_boxes XYXY_ABS float32 clipped to the image, gt_classes int64; boxes of zero
       width or height are dropped, as d2lite's DatasetMapper does). mmdetection's
       transforms clip already; the final clip keeps boxes valid after d2lite's own
       augmentations, which do not.

    Returns None when an augmentation rejects the sample
    (:class:`~rtmdet.transforms.SampleRejected`, e.g. a crop without boxes); d2lite's
    :class:`~d2lite.data.MapDataset` then maps another random index, as mmdetection's
    dataset refetches one.

    State: outside a training stream, multi-image augmentations keep caches in
    themselves, so each data-loader worker (holding its own copy of the mapper) has its
    own caches; in a stream they only memoise earlier samples (see
    :mod:`rtmdet.mix_transforms`).

    Args:
        augmentations: e.g. ``[CachedMosaic(...), RandomResize(...), RandomCrop(...),
            YOLOXHSVRandomAug(), RandomFlip(0.5), Pad(...), CachedMixUp(...)]``.
        image_format: "BGR" or "RGB". Defaults to "BGR".
        min_box_size: annotations narrower or lower than this (pixels) are skipped.
            Defaults to 1.0 (mmdetection's CocoDataset).
    """

    def __init__(
        self,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "BGR",
        min_box_size: float = 1.0,
    ):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"RTMDetDatasetMapper: image_format must be 'BGR' or 'RGB', got {image_format!r}.")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.min_box_size = min_box_size
        self.is_train = True
        self._last_position: Optional[int] = None  # stream position of the last call (retries map it again)
        logger.info(f"[RTMDetDatasetMapper] Augmentations used in training: {augmentations}")

    def annotations_to_arrays(self, dataset_dict: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4) float32 XYXY_ABS, classes (N,) int64)`` of the usable annotations."""
        height, width = dataset_dict.get("height"), dataset_dict.get("width")
        boxes, classes = [], []
        for obj in dataset_dict.get("annotations", []):
            if obj.get("iscrowd", 0) != 0:
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(obj["bbox"]), obj["bbox_mode"], BoxMode.XYXY_ABS)
            if x1 - x0 < self.min_box_size or y1 - y0 < self.min_box_size or obj.get("area", 1) <= 0:
                continue
            if height is not None and width is not None:
                if min(x1, width) <= max(x0, 0) or min(y1, height) <= max(y0, 0):
                    continue
            boxes.append([x0, y0, x1, y1])
            classes.append(obj["category_id"])
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """
        Args:
            dataset_dict: one image's metadata in detectron2 dataset format.

        Returns:
            The dict with "image" and "instances" ("annotations" removed), or None if an
            augmentation rejected the sample.

        Raises:
            FileNotFoundError / OSError / SizeMismatchError naming the file and dataset.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        history = None
        if stream.current_sample() is not None:
            position = stream.stream_position()
            history = StreamHistory(position, self._seed_at, self._stage_input, position != self._last_position)
            self._last_position = position
        try:
            aug_input = self._augment(dataset_dict, history, len(self.augmentations.augs))
        except SampleRejected:
            return None  # MapDataset maps another index (and warns if that keeps happening)

        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        instances = Instances(image_shape)
        boxes = clip_boxes(aug_input.boxes, image_shape[0], image_shape[1])
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.as_tensor(aug_input.classes, dtype=torch.int64)
        dataset_dict["instances"] = utils.filter_empty_instances(instances, box_threshold=0.0)
        return dataset_dict

    def _augment(self, dataset_dict: Dict[str, Any], history: Optional[StreamHistory], stages: int) -> DetAugInput:
        """Read the image, draw the sample's seed and apply the first ``stages``
        augmentations; "annotations" is removed from ``dataset_dict``.

        Raises:
            SampleRejected: an augmentation rejected the sample.
        """
        file_name = dataset_dict.get("file_name", "<no file_name>")
        try:
            image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (OSError, utils.SizeMismatchError) as e:
            where = f" (dataset '{dataset_dict['dataset_name']}')" if "dataset_name" in dataset_dict else ""
            msg = f"{e} [while mapping image_id={dataset_dict.get('image_id')} file '{file_name}'{where}]"
            raise type(e)(msg) from e
        boxes, classes = self.annotations_to_arrays(dataset_dict)
        dataset_dict.pop("annotations", None)

        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
        aug_input = DetAugInput(
            image, boxes=boxes, classes=classes, rng=np.random.default_rng(seed), image_format=self.image_format
        )
        aug_input.history = history
        for stage, aug in enumerate(self.augmentations.augs[:stages]):
            if history is not None:
                history.stage = stage
            aug(aug_input)
        return aug_input

    @staticmethod
    def _seed_at(position: int) -> int:
        return stream.stream_sample(position).seed

    def _stage_input(self, position: int, stage: int) -> Optional[CachedSample]:
        """The sample at ``position`` of the stream mapped under its own seed up to
        augmentation ``stage`` (what it was when it passed there), or None if rejected."""
        sample = stream.stream_sample(position)
        history = StreamHistory(position, self._seed_at, self._stage_input)  # the position's own mapping
        with stream.seeded_rngs(sample.seed):
            try:
                aug_input = self._augment(copy.deepcopy(stream.raw_item(sample)), history, stage)
            except SampleRejected:
                return None
        return CachedSample(aug_input.image, aug_input.boxes, aug_input.classes)
