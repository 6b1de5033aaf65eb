"""Write an export adapter (:mod:`d2lite.export.adapter`) in one of three formats.

=================== ====== ===================================================================
format              file   how
=================== ====== ===================================================================
exported_program    .pt2   ``torch.export.export`` with dynamic height and width
                           (:func:`capture_program`), saved with ``torch.export.save``;
                           load with ``torch.export.load(f).module()``.
torchscript         .ts    backbone and head traced (``torch.jit.trace``), the rest scripted
                           (``torch.jit.script``), so the data-dependent steps (thresholds,
                           top-k, NMS) stay code; load with ``torch.jit.load``.
onnx                .onnx  ``torch.onnx.export(..., dynamo=True)`` of the same
                           :func:`capture_program` graph, opset :data:`ONNX_OPSET`;
                           needs the ``export`` extra (onnx, onnxscript; onnxruntime runs it).
=================== ====== ===================================================================

All three take ``image`` (C, H, W) uint8 and ``original_size`` (2,) int64 and return
``boxes``, ``scores``, ``classes`` (ONNX input and output names are these words). NMS is
torchvision's operator: ``import torchvision`` before loading a .pt2 or .ts file registers
it; ONNX has it built in (``NonMaxSuppression``).
"""

import contextlib
import importlib
import logging
import os
import warnings
from typing import Any, Dict, Iterator, Tuple

import torch
from torch import Tensor

from .adapter import DetectorExportAdapter
from .nms import nms_shape_fix

__all__ = [
    "FORMATS",
    "FILE_NAMES",
    "ONNX_OPSET",
    "EXPORT_EXTRA_PACKAGES",
    "MissingExtraError",
    "require_export_extra",
    "example_inputs",
    "export_adapter",
    "capture_program",
    "describe_inputs",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
]

FILE_NAMES: Dict[str, str] = {
    "exported_program": "model.pt2",
    "torchscript": "model.ts",
    "onnx": "model.onnx",
}
FORMATS: Tuple[str, ...] = tuple(FILE_NAMES)
ONNX_OPSET = 18
"""ONNX opset of the ONNX export (onnxruntime >= 1.14 runs it)."""
EXPORT_EXTRA_PACKAGES: Tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAMES = ["image", "original_size"]
OUTPUT_NAMES = ["boxes", "scores", "classes"]


class MissingExtraError(ImportError):
    """A format needs packages of an optional extra that are not installed."""


def require_export_extra(packages: Tuple[str, ...] = EXPORT_EXTRA_PACKAGES) -> None:
    """Import ``packages``; raise :class:`MissingExtraError` naming the missing ones and the extra."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"the ONNX export needs {', '.join(missing)} (not installed); install d2lite's export extra: "
            "pip install -e '.[export]' (onnx, onnxscript, onnxruntime)"
        )


def example_inputs(adapter: DetectorExportAdapter) -> Tuple[Tensor, Tensor]:
    """A zero image of a size inside the adapter's size range (height != width where the
    range allows, so the two sizes stay independent) and its original size."""
    low, high = adapter.min_size, adapter.max_size
    height = min(max(320, low), high)
    width = min(max(height + 32, low), high)
    if width == height and height > low:
        height -= 1
    channels = int(adapter.pixel_mean.shape[0])
    image = torch.zeros((channels, height, width), dtype=torch.uint8, device=adapter.pixel_mean.device)
    return image, torch.tensor([height, width], dtype=torch.int64)


def _dynamic_shapes(adapter: DetectorExportAdapter) -> Tuple[Dict[int, Any], None]:
    low, high = adapter.min_size, adapter.max_size
    if low == high:
        return ({}, None)
    height = torch.export.Dim("height", min=low, max=high)
    width = torch.export.Dim("width", min=low, max=high)
    return ({1: height, 2: width}, None)


def capture_program(adapter: DetectorExportAdapter) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``adapter`` with dynamic height and width in its size range.

    Shape conditions that torch cannot prove from the range (e.g. that ``1 % (512 * k) != 0``
    on channels-last BatchNorm) become run-time checks instead of errors; they always hold.
    """
    with torch.no_grad(), nms_shape_fix():
        return torch.export.export(
            adapter,
            example_inputs(adapter),
            dynamic_shapes=_dynamic_shapes(adapter),
            prefer_deferred_runtime_asserts_over_guards=True,
        )


def _export_program(adapter: DetectorExportAdapter, path: str) -> None:
    program = capture_program(adapter)
    with warnings.catch_warnings():
        # Weights sharing storage (views) are saved whole; the warning is about non-CPU weights.
        warnings.filterwarnings("ignore", "No complete tensor found in the group", UserWarning)
        torch.export.save(program, path)


def _export_torchscript(adapter: DetectorExportAdapter, path: str) -> None:
    image, _ = example_inputs(adapter)
    network = adapter.network
    with torch.no_grad(), warnings.catch_warnings():
        # The modules' shape checks (empty input, GroupNorm group size) are Python branches that
        # trace as constants; they hold for every image in the size range.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript is deprecated in favour of torch.export, but is what the .ts format is.
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(network, (adapter.preprocess(image),), strict=False, check_trace=False)
        adapter.network = traced
        try:
            scripted = torch.jit.script(adapter)
        finally:
            adapter.network = network
        torch.jit.save(scripted, path)


@contextlib.contextmanager
def _quiet_logger(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _export_onnx(adapter: DetectorExportAdapter, path: str) -> None:
    require_export_extra()
    program = capture_program(adapter)  # the graph of the .pt2 export
    # onnx_ir warns for every attribute given as an empty list (it means INTS, which is right).
    with torch.no_grad(), nms_shape_fix(), _quiet_logger("onnx_ir", logging.ERROR):
        onnx_program = torch.onnx.export(
            program,
            example_inputs(adapter),
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    onnx_program.save(path)


def export_adapter(adapter: DetectorExportAdapter, fmt: str, output_dir: str) -> str:
    """Write ``adapter`` (on the CPU, in eval mode) as ``fmt`` into ``output_dir``;
    returns the file's path (``output_dir/`` + :data:`FILE_NAMES` ``[fmt]``).

    Raises:
        ValueError: unknown ``fmt``.
        MissingExtraError: ``fmt == "onnx"`` without the export extra.
    """
    if fmt not in FILE_NAMES:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    adapter.eval()
    writers = {"exported_program": _export_program, "torchscript": _export_torchscript, "onnx": _export_onnx}
    writers[fmt](adapter, path)
    return path


def describe_inputs(adapter: DetectorExportAdapter) -> Dict[str, Any]:
    """The input/output contract of an export, for its ``export.json``."""
    return {
        "image": {
            "shape": ["C", "H", "W"],
            "channels": int(adapter.pixel_mean.shape[0]),
            "dtype": "uint8",
            "channel_order": adapter.input_format,
            "min_size": adapter.min_size,
            "max_size": adapter.max_size,
        },
        "original_size": {"shape": [2], "dtype": "int64", "meaning": "(height, width) before resizing"},
        "outputs": {
            "boxes": "(N, 4) float32 XYXY in original-image pixels",
            "scores": "(N,) float32",
            "classes": "(N,) int64",
        },
    }
