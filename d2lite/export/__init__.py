"""Export a trained detector for deployment: torch.export (.pt2), TorchScript (.ts) and ONNX.

* :mod:`~d2lite.export.adapter`: the detector as one function of tensors
  (:class:`DetectorExportAdapter`) and the registry that projects extend
  (:func:`register_export_adapter`);
* :mod:`~d2lite.export.retinanet`: RetinaNet's adapter;
* :mod:`~d2lite.export.nms`: class-aware NMS for export, equal to the eager one;
* :mod:`~d2lite.export.formats`: writing each format;
* :mod:`~d2lite.export.runtime`: loading and running an export with torch/torchvision or
  onnxruntime only (no d2lite needed);
* :mod:`~d2lite.export.check`: the comparison with the eager model.

``tools/deploy/export_model.py`` puts them together.
"""

from .adapter import (
    DenseNetwork,
    DetectorExportAdapter,
    build_export_adapter,
    register_export_adapter,
    registered_model_types,
)
from .nms import batched_nms
from .retinanet import RetinaNetExportAdapter

__all__ = [
    "DenseNetwork",
    "DetectorExportAdapter",
    "RetinaNetExportAdapter",
    "batched_nms",
    "build_export_adapter",
    "register_export_adapter",
    "registered_model_types",
]
