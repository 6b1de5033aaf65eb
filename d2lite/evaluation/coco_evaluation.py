"""COCO-style box AP with the official pycocotools implementation."""

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import d2lite.utils.comm as comm
from d2lite.structures import BoxMode, Instances
from d2lite.utils.file_io import PathManager

from .evaluator import DatasetEvaluator

__all__ = ["COCOEvaluator", "instances_to_coco_json"]

_BOX_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


class COCOEvaluator(DatasetEvaluator):
    """Box detection AP (AP, AP50, AP75, APs, APm, APl and AP per class) of a dataset,
    computed by pycocotools' ``COCOeval``; metrics are in percent (0-100), NaN where
    a metric cannot be computed (e.g. APl with no large objects, or no detections).

    Works with any dataset in the ``DatasetCatalog``: one whose metadata has a
    ``json_file`` is evaluated against that file; any other is converted to a COCO
    json in ``output_dir`` first (:func:`d2lite.data.datasets.coco.convert_to_coco_json`).

    Example::

        evaluator = COCOEvaluator("shapes_val", output_dir="output/eval")
        results = inference_on_dataset(model, test_loader, evaluator)
        results["bbox"]["AP50"]
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = False,
        allow_cached_coco: bool = True,
    ):
        """
        Args:
            dataset_name: name of a dataset in the DatasetCatalog / MetadataCatalog.
            tasks: tasks to evaluate; only ("bbox",) is supported (d2lite has no masks
                or keypoints). Defaults to ("bbox",).
            distributed: if True, gather the predictions of all ranks and evaluate on
                rank 0 (other ranks return {}); else evaluate this process's predictions.
            output_dir: if given, ``instances_predictions.pth`` (the processed predictions)
                and ``coco_instances_results.json`` (COCO result format) are written there.
                Required for datasets without a ``json_file``.
            max_dets_per_image: the highest-scoring detections per image that COCOeval
                considers (COCOeval's maxDets become [1, 10, max_dets_per_image]; values
                below 10 do limit the detections, unlike detectron2). Defaults to 100.
            use_fast_impl: accepted because detectron2 scripts pass it (e.g. ``False`` to
                avoid detectron2's "Fast COCO eval is not built" warning); d2lite always
                uses pycocotools.
            allow_cached_coco: reuse a previously converted COCO json in ``output_dir``.
                Defaults to True.
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        if tasks is None:
            tasks = ("bbox",)
        unsupported = [t for t in tasks if t != "bbox"]
        if unsupported:
            raise ValueError(
                f"COCOEvaluator of d2lite evaluates boxes only (tasks=('bbox',)); got tasks={tuple(tasks)}."
            )
        self._tasks = tuple(tasks)
        if use_fast_impl:
            self._logger.warning("COCOEvaluator: d2lite has no fast COCOeval; using pycocotools.")
        if max_dets_per_image is None:
            max_dets_per_image = 100
        if max_dets_per_image < 1:
            raise ValueError(f"max_dets_per_image must be >= 1, got {max_dets_per_image}")
        # COCOeval sorts params.maxDets and evaluates with the last (largest) one.
        max_dets_per_image = int(max_dets_per_image)
        self._max_dets_per_image = [m for m in (1, 10) if m < max_dets_per_image] + [max_dets_per_image]
        self._cpu_device = torch.device("cpu")

        from d2lite.data.catalog import DatasetCatalog, MetadataCatalog

        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            if output_dir is None:
                raise ValueError(
                    f"Dataset '{dataset_name}' has no 'json_file' in its metadata, so COCOEvaluator "
                    "converts it to COCO json; pass output_dir=... to say where to write it."
                )
            from d2lite.data.datasets.coco import convert_to_coco_json

            self._logger.info(f"Trying to convert '{dataset_name}' to COCO format ...")
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            self._metadata.json_file = cache_path
            convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
        elif not PathManager.exists(self._metadata.json_file) and dataset_name in DatasetCatalog.list():
            # Datasets made on first use (e.g. shapes) write their json when loaded.
            DatasetCatalog.get(dataset_name)

        json_file = PathManager.get_local_path(self._metadata.json_file)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"COCOEvaluator: the json_file '{json_file}' of dataset '{dataset_name}' does not exist."
            )
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_api = COCO(json_file)
        # Test-set jsons have no annotations (evaluation happens on the COCO server).
        self._do_evaluation = "annotations" in self._coco_api.dataset

        json_cat_ids = sorted(self._coco_api.getCatIds())
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            self._id_map = dict(self._metadata.thing_dataset_id_to_contiguous_id)
        else:
            # The mapping load_coco_json(json_file, image_root, dataset_name) would set.
            self._id_map = {cat_id: i for i, cat_id in enumerate(json_cat_ids)}
        if sorted(self._id_map.values()) != list(range(len(self._id_map))):
            raise ValueError(
                f"thing_dataset_id_to_contiguous_id of '{dataset_name}' must map to "
                f"0..{len(self._id_map) - 1}; got {self._id_map}"
            )
        if self._do_evaluation and sorted(self._id_map) != json_cat_ids:
            raise ValueError(
                f"The category ids of '{json_file}' ({json_cat_ids}) differ from the keys of "
                f"thing_dataset_id_to_contiguous_id of '{dataset_name}' ({sorted(self._id_map)})."
            )
        self._class_names = self._metadata.get("thing_classes") or [
            c["name"] for c in self._coco_api.loadCats(json_cat_ids)
        ]
        self.reset()

    def reset(self) -> None:
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """
        Args:
            inputs: model inputs, dicts with at least "image_id".
            outputs: model outputs, dicts with "instances": Instances with pred_boxes
                (XYXY absolute, original image size), scores and pred_classes
                (contiguous ids).
        """
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            if "image_id" not in inp:
                raise KeyError(f"COCOEvaluator needs 'image_id' in each model input; got keys {sorted(inp)}.")
            instances = out["instances"].to(self._cpu_device)
            self._predictions.append(
                {"image_id": inp["image_id"], "instances": instances_to_coco_json(instances, inp["image_id"])}
            )

    def evaluate(self, img_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """
        Args:
            img_ids: evaluate on these image ids only. Defaults to all images of the json.

        Returns:
            OrderedDict {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl",
            "AP-<class name>", ...}}; {} on non-main ranks or when nothing was processed.
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*gathered))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions

        if len(predictions) == 0:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "instances_predictions.pth"), "wb") as f:
                torch.save(predictions, f)

        results: Dict[str, Any] = OrderedDict()
        self._eval_predictions(predictions, results, img_ids)
        return copy.deepcopy(results)

    def _eval_predictions(
        self, predictions: List[Dict[str, Any]], results: Dict[str, Any], img_ids: Optional[Sequence[int]]
    ) -> None:
        # Copies: mapping the ids below must not change self._predictions.
        coco_results = [dict(r) for p in predictions for r in p["instances"]]

        # Contiguous class ids back to the json's category ids.
        num_classes = len(self._id_map)
        reverse_id_mapping = {v: k for k, v in self._id_map.items()}
        for result in coco_results:
            category_id = result["category_id"]
            if not 0 <= category_id < num_classes:
                raise ValueError(
                    f"A prediction for image {result['image_id']} has class {category_id}, but "
                    f"dataset '{self._dataset_name}' has {num_classes} classes (ids 0..{num_classes - 1})."
                )
            result["category_id"] = reverse_id_mapping[category_id]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with the official COCO API ...")
        for task in sorted(self._tasks):
            coco_eval = (
                _evaluate_predictions_on_coco(
                    self._coco_api, coco_results, task, img_ids=img_ids, max_dets_per_image=self._max_dets_per_image
                )
                if len(coco_results) > 0
                else None  # pycocotools cannot load an empty result list
            )
            results[task] = self._derive_coco_results(coco_eval, task, self._class_names)

    def _derive_coco_results(
        self, coco_eval: Optional[COCOeval], iou_type: str, class_names: Optional[List[str]] = None
    ) -> Dict[str, float]:
        """Metrics in percent from a summarised COCOeval (None: no detections at all)."""
        metrics = _BOX_METRICS
        per_class = class_names is not None and len(class_names) > 1
        if coco_eval is None:
            self._logger.warning("No predictions from the model! All metrics are NaN.")
            results = {m: float("nan") for m in metrics}
            if per_class:
                results.update({"AP-" + name: float("nan") for name in class_names})
            return results

        results = {
            m: float(coco_eval.stats[i] * 100 if coco_eval.stats[i] >= 0 else "nan") for i, m in enumerate(metrics)
        }
        self._logger.info(
            f"Evaluation results for {iou_type}: \n"
            + _format_table(list(results), [[f"{v:.3f}" for v in results.values()]])
        )
        if not np.isfinite(sum(results.values())):
            self._logger.info("Some metrics cannot be computed and are shown as NaN.")
        if not per_class:
            return results

        # precision: (iou thresholds, recall thresholds, classes, area ranges, max dets)
        precisions = coco_eval.eval["precision"]
        if len(class_names) != precisions.shape[2]:
            raise ValueError(
                f"Dataset '{self._dataset_name}' has {len(class_names)} thing_classes but its json "
                f"has {precisions.shape[2]} categories."
            )
        # COCOeval's category axis follows its sorted json category ids; the class of
        # each is given by thing_dataset_id_to_contiguous_id (not necessarily monotonic).
        ap_of_class = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            # area range "all", the largest max-dets setting
            precision = precisions[:, :, k, 0, -1]
            precision = precision[precision > -1]
            ap_of_class[self._id_map[cat_id]] = float(np.mean(precision)) * 100 if precision.size else float("nan")
        per_category = [(name, ap_of_class[idx]) for idx, name in enumerate(class_names)]

        n_cols = min(6, len(per_category) * 2)
        flat = [x for name, ap in per_category for x in (name, f"{ap:.3f}")]
        rows = [flat[i : i + n_cols] for i in range(0, len(flat), n_cols)]
        rows[-1] = rows[-1] + [""] * (n_cols - len(rows[-1]))
        self._logger.info(f"Per-category {iou_type} AP: \n" + _format_table(["category", "AP"] * (n_cols // 2), rows))
        results.update({"AP-" + name: ap for name, ap in per_category})
        return results


def instances_to_coco_json(instances: Instances, img_id: int) -> List[Dict[str, Any]]:
    """Detections of one image in COCO result format.

    Args:
        instances: with pred_boxes (Boxes, XYXY absolute), scores (N,), pred_classes (N,).
        img_id: the image id.

    Returns:
        list of {"image_id", "category_id" (still the contiguous class id),
        "bbox" (XYWH absolute), "score"}.
    """
    num_instance = len(instances)
    if num_instance == 0:
        return []
    boxes = instances.pred_boxes.tensor.numpy()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    return [
        {"image_id": img_id, "category_id": int(classes[k]), "bbox": boxes[k], "score": float(scores[k])}
        for k in range(num_instance)
    ]


def _evaluate_predictions_on_coco(
    coco_gt: COCO,
    coco_results: List[Dict[str, Any]],
    iou_type: str,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Sequence[int] = (1, 10, 100),
) -> COCOeval:
    """Run COCOeval (evaluate, accumulate, summarise) and return it; the summary is logged."""
    if not coco_results:
        raise ValueError("_evaluate_predictions_on_coco needs at least one detection")
    logger = logging.getLogger(__name__)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(coco_results)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_eval.evaluate()
        coco_eval.accumulate()
    coco_eval.stats = _summarize_dets(coco_eval, out)
    logger.info("COCOeval summary:\n" + out.getvalue().rstrip())
    return coco_eval


def _summarize_dets(coco_eval: COCOeval, out: io.StringIO) -> np.ndarray:
    """The 12 box statistics of ``COCOeval.summarize`` for any ``params.maxDets``
    (pycocotools hard-codes 100 for the first one); -1 where undefined. With fewer
    than 3 maxDets values the recall statistics reuse the available ones."""
    p = coco_eval.params
    max_dets = [p.maxDets[0], p.maxDets[min(1, len(p.maxDets) - 1)], p.maxDets[-1]]

    def summarize(ap: bool, iou: Optional[float] = None, area: str = "all", md: int = max_dets[2]) -> float:
        a = p.areaRngLbl.index(area)
        m = list(p.maxDets).index(md)
        if ap:
            s = coco_eval.eval["precision"]  # (T, R, K, A, M)
            if iou is not None:
                s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
            s = s[:, :, :, a, m]
        else:
            s = coco_eval.eval["recall"]  # (T, K, A, M)
            if iou is not None:
                s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
            s = s[:, :, a, m]
        valid = s[s > -1]
        mean = float(np.mean(valid)) if valid.size else -1.0
        iou_str = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
        title = "Average Precision  (AP)" if ap else "Average Recall     (AR)"
        out.write(f" {title} @[ IoU={iou_str:<9} | area={area:>6s} | maxDets={md:>3d} ] = {mean:0.3f}\n")
        return mean

    return np.array(
        [
            summarize(True),
            summarize(True, iou=0.5),
            summarize(True, iou=0.75),
            summarize(True, area="small"),
            summarize(True, area="medium"),
            summarize(True, area="large"),
            summarize(False, md=max_dets[0]),
            summarize(False, md=max_dets[1]),
            summarize(False, md=max_dets[2]),
            summarize(False, area="small"),
            summarize(False, area="medium"),
            summarize(False, area="large"),
        ]
    )


def _format_table(headers: List[str], rows: List[List[str]]) -> str:
    """A left-aligned markdown ("pipe") table of strings."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"]
    lines.append("|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    return "\n".join(lines)
