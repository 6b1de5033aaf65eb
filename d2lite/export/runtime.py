"""Load and run an exported d2lite detector with torch/torchvision or onnxruntime only.

This module imports nothing from d2lite: copy it next to a deployed model, or run it as a
script. ``tools/deploy/export_model.py`` runs it as a script in a new process, with d2lite
imports forbidden, to check each export the way a deployment would load it::

    python runtime.py MODEL INPUTS.pt OUTPUTS.pt [--forbid-import d2lite,rtmdet]

``INPUTS.pt`` is a ``torch.save``-d list of ``(image, original_size)`` pairs; ``OUTPUTS.pt``
receives the list of ``(boxes, scores, classes)``.
"""

import argparse
import importlib.abc
import os
import sys
import warnings
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["load_detector", "forbid_imports"]

Detector = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]


def load_detector(path: str) -> Detector:
    """``detector(image, original_size) -> (boxes, scores, classes)`` from an exported file.

    ``.pt2``: ``torch.export.load``; ``.ts``: ``torch.jit.load`` (both on the CPU, torchvision
    imported for its NMS operator); ``.onnx``: an onnxruntime CPU session with torch's number
    of threads. ``image`` is a
    (C, H, W) uint8 tensor, ``original_size`` a (2,) int64 tensor (height, width).
    """
    suffix = os.path.splitext(path)[1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path}")
    if suffix in (".pt2", ".ts"):
        import torchvision  # noqa: F401  (registers torch.ops.torchvision.nms)

        if suffix == ".pt2":
            module = torch.export.load(path).module()
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated, but .ts files are TorchScript
                warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
                module = torch.jit.load(path, map_location="cpu")

        def run_torch(image: Tensor, original_size: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            with torch.no_grad():
                boxes, scores, classes = module(image, original_size)
            return boxes, scores, classes

        return run_torch
    if suffix == ".onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch uses
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def run_onnx(image: Tensor, original_size: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            feeds = {"image": image.numpy(), "original_size": original_size.numpy()}
            boxes, scores, classes = session.run(["boxes", "scores", "classes"], feeds)
            return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)

        return run_onnx
    raise ValueError(f"{path}: unknown export suffix {suffix!r}; expected .pt2, .ts or .onnx")


class _ForbiddenImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def find_spec(self, fullname, path, target=None):  # noqa: D102 (MetaPathFinder API)
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} may not be imported here: the exported model must run without it")
        return None


def forbid_imports(names: Sequence[str]) -> None:
    """Make ``import <name>`` (and its submodules) fail in this process, also for code that
    loading a model would run; modules already imported stay."""
    sys.meta_path.insert(0, _ForbiddenImports(names))


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model: .pt2, .ts or .onnx")
    parser.add_argument("inputs", help="torch.save-d list of (image, original_size)")
    parser.add_argument("outputs", help="where to torch.save the list of (boxes, scores, classes)")
    parser.add_argument("--forbid-import", default="", help="comma-separated packages that must not be imported")
    args = parser.parse_args(argv)
    if args.forbid_import:
        forbid_imports([n for n in args.forbid_import.split(",") if n])
    detector = load_detector(args.model)
    inputs = torch.load(args.inputs, weights_only=True)
    outputs: List[Tuple[Tensor, Tensor, Tensor]] = [detector(image, size) for image, size in inputs]
    torch.save(outputs, args.outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
