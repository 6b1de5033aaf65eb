"""Export the trained detector of a LazyConfig file: the functions behind
``tools/deploy/export_model.py``.

* :func:`load_trained_model`: the config's model on the CPU with the weights of
  ``train.init_checkpoint`` (its EMA weights when it has them, as ``--eval-only``);
* :func:`sample_images`: the first images of ``dataloader.test``, as the model gets them;
* :func:`export_model`: adapter, file, ``export.json`` and the check against the eager model.
"""

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from d2lite.config import instantiate
from d2lite.engine.lazy_train import ConfigError, build_model, class_names, load_eval_weights

from .adapter import DetectorExportAdapter, build_export_adapter
from .check import CheckReport, Sample, check_export
from .formats import FILE_NAMES, ONNX_OPSET, describe_inputs, export_adapter

__all__ = ["load_trained_model", "sample_images", "export_model", "ExportResult", "METADATA_FILE"]

logger = logging.getLogger(__name__)

METADATA_FILE = "export.json"


def load_trained_model(cfg: DictConfig) -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` on the CPU (``train.device`` is set to cpu) and load
    ``train.init_checkpoint``; with ``train.ema.enabled`` and a checkpoint holding EMA
    weights, those replace the model's (unless ``train.ema.use_for_eval`` is False).

    Returns:
        the model in eval mode, and "ema" or "model" (which weights it holds).

    Raises:
        ConfigError: ``train.init_checkpoint`` is empty or names no file.
    """
    path = cfg.train.get("init_checkpoint", "")
    if not path:
        raise ConfigError("train.init_checkpoint is empty: add train.init_checkpoint=PATH (the trained weights)")
    cfg.train.device = "cpu"
    model = build_model(cfg)
    try:
        ema = load_eval_weights(cfg, model, action="exporting")
    except FileNotFoundError as e:
        raise ConfigError(f"train.init_checkpoint={path}: no such checkpoint file") from e
    weights = "model"
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
        weights = "ema"
    return model.eval(), weights


def sample_images(cfg: DictConfig, num_images: int) -> List[Sample]:
    """The first ``num_images`` images of ``cfg.dataloader.test`` (resized by its mapper),
    with their original sizes and file names."""
    if "test" not in cfg.dataloader:
        raise ConfigError("the config has no dataloader.test to take check images from; pass --no-check")
    samples: List[Sample] = []
    for batch in instantiate(cfg.dataloader.test):
        for d in batch:
            samples.append(Sample.from_dataset_dict(d, len(samples)))
        if len(samples) >= num_images:
            break
    return samples[:num_images]


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    path: str
    format: str
    weights: str
    seconds: float
    check: Optional[CheckReport]


def _augmentations(cfg: DictConfig) -> List[Dict[str, Any]]:
    """The test mapper's augmentations as plain dicts (``{"type": "d2lite...ResizeShortestEdge", ...}``)."""
    if "test" not in cfg.dataloader or "mapper" not in cfg.dataloader.test:
        return []
    augs = cfg.dataloader.test.mapper.get("augmentations", [])
    out = []
    for a in augs or []:
        node = OmegaConf.to_container(a, resolve=True) if isinstance(a, DictConfig) else dict(a)
        target = node.pop("_target_", None)
        out.append(
            {"type": target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}", **node}
        )
    return out


def _write_metadata(
    cfg: DictConfig, config_file: str, adapter: DetectorExportAdapter, model: nn.Module, result: ExportResult
) -> None:
    out_dir = os.path.dirname(result.path)
    meta_path = os.path.join(out_dir, METADATA_FILE)
    checkpoint = str(cfg.train.init_checkpoint)
    meta: Dict[str, Any] = {}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old.get("config_file") == config_file and old.get("checkpoint") == checkpoint:
            meta = old
    names = class_names(cfg.dataloader.test) if "test" in cfg.dataloader else None
    meta.update(
        {
            "config_file": config_file,
            "checkpoint": checkpoint,
            "weights": result.weights,
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "inputs": describe_inputs(adapter),
            "test_augmentations": _augmentations(cfg),
            "class_names": list(names) if names else None,
            "versions": {"torch": torch.__version__, "onnx_opset": ONNX_OPSET},
        }
    )
    exports = meta.setdefault("exports", {})
    exports[result.format] = {
        "file": os.path.basename(result.path),
        "export_seconds": round(result.seconds, 1),
        "check": asdict(result.check) if result.check is not None else "skipped (--no-check)",
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)


def export_model(
    cfg: DictConfig,
    fmt: str,
    output_dir: str,
    config_file: str = "",
    check: bool = True,
    num_check_images: int = 4,
    size_range: Optional[Tuple[Optional[int], Optional[int]]] = None,
) -> ExportResult:
    """Export the trained model of ``cfg`` as ``fmt`` to ``output_dir`` (file name from
    :data:`~d2lite.export.formats.FILE_NAMES`), write/update ``output_dir/export.json`` and,
    with ``check``, compare the export with the eager model on ``num_check_images`` test images.
    ``size_range`` (min, max) changes the image sizes the export takes; None (or a None end)
    keeps the adapter's default.

    Raises:
        ConfigError: bad checkpoint, size range, or test images outside the size range.
        MissingExtraError: ONNX without the export extra.
        ExportCheckError: the export's detections differ (the export file is kept;
            ``export.json`` is not updated).
    """
    if fmt not in FILE_NAMES:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FILE_NAMES)}")
    model, weights = load_trained_model(cfg)
    try:
        adapter = build_export_adapter(model)
        if size_range is not None:
            low, high = adapter.default_size_range()
            adapter.set_size_range(
                size_range[0] if size_range[0] is not None else low,
                size_range[1] if size_range[1] is not None else high,
            )
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    samples: List[Sample] = []
    if check:
        samples = sample_images(cfg, num_check_images)
        for s in samples:
            h, w = s.image.shape[1], s.image.shape[2]
            if not (adapter.min_size <= min(h, w) and max(h, w) <= adapter.max_size):
                raise ConfigError(
                    f"test image {s.name} is {h}x{w}, outside the export's size range "
                    f"[{adapter.min_size}, {adapter.max_size}]; widen it with --min-size/--max-size"
                )
    start = time.perf_counter()
    path = export_adapter(adapter, fmt, output_dir)
    seconds = time.perf_counter() - start
    report = check_export(model, path, samples) if check else None
    result = ExportResult(path, fmt, weights, seconds, report)
    _write_metadata(cfg, config_file, adapter, model, result)
    return result
