"""Check an exported detector against the eager model it came from.

:func:`check_export` runs the eager model and the exported file (loaded in a new Python
process by :mod:`d2lite.export.runtime`, with ``d2lite`` imports forbidden) on the same
images and compares the detections with :func:`compare_detections`: the same number, and
for every eager detection one exported detection of the same class with every box
coordinate within ``box_tol`` pixels and the score within ``score_tol``.
"""

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import runtime

__all__ = [
    "Sample",
    "CheckReport",
    "ExportCheckError",
    "eager_detections",
    "compare_detections",
    "run_exported",
    "check_export",
]

Detections = Tuple[Tensor, Tensor, Tensor]

BOX_TOL = 1e-3
SCORE_TOL = 1e-4


@dataclass
class Sample:
    """One test image as the data loader gives it: ``image`` (C, H, W) uint8 (resized),
    ``height``/``width`` of the original image, and a name for messages."""

    image: Tensor
    height: int
    width: int
    name: str

    @classmethod
    def from_dataset_dict(cls, d: Dict, index: int) -> "Sample":
        image = d["image"]
        name = d.get("file_name", f"test image {index}")
        if image.dtype != torch.uint8:
            raise ValueError(f"{name}: the test mapper gives a {image.dtype} image; the export takes uint8")
        return cls(image, int(d.get("height", image.shape[1])), int(d.get("width", image.shape[2])), name)

    def original_size(self) -> Tensor:
        return torch.tensor([self.height, self.width], dtype=torch.int64)


class ExportCheckError(RuntimeError):
    """The export does not give the eager model's detections (the message names the first mismatch)."""


def eager_detections(model: nn.Module, sample: Sample) -> Detections:
    """The eager model's (boxes, scores, classes) for one sample, as in evaluation."""
    with torch.no_grad():
        inst = model([{"image": sample.image, "height": sample.height, "width": sample.width}])[0]["instances"]
    inst = inst.to("cpu")
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def _describe(dets: Detections, i: int) -> str:
    box = ", ".join(f"{v:.3f}" for v in dets[0][i].tolist())
    return f"class {int(dets[2][i])}, score {float(dets[1][i]):.6f}, box [{box}]"


def compare_detections(
    expected: Detections, actual: Detections, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL
) -> Optional[str]:
    """None when ``actual`` has the detections of ``expected``, else the first mismatch in words.

    Detections are matched, not compared by position, so that two detections of (nearly)
    equal score may come in either order: the i-th expected detection (by decreasing score)
    matches the first unmatched actual one of the same class whose box coordinates all lie
    within ``box_tol`` pixels; its score must lie within ``score_tol``. Two detections of one
    class that NMS kept cannot both be that close, so the matching is unambiguous.
    """
    return _match(expected, actual, box_tol, score_tol)[0]


def _match(
    expected: Detections, actual: Detections, box_tol: float, score_tol: float
) -> Tuple[Optional[str], float, float]:
    """(first mismatch or None, largest box difference, largest score difference of the matches)."""
    e_boxes, e_scores, e_classes = (t.detach().cpu() for t in expected)
    a_boxes, a_scores, a_classes = (t.detach().cpu() for t in actual)
    unmatched = list(range(len(a_scores)))
    max_box, max_score = 0.0, 0.0
    for i in range(len(e_scores)):
        candidates = [j for j in unmatched if int(a_classes[j]) == int(e_classes[i])]
        diffs = [float((a_boxes[j].double() - e_boxes[i].double()).abs().max()) for j in candidates]
        close = [(d, j) for j, d in zip(candidates, diffs) if d <= box_tol]
        if not close:
            nearest = f"; the nearest export box of that class differs by {min(diffs):.4g} px" if diffs else ""
            message = (
                f"eager detection {i} ({_describe((e_boxes, e_scores, e_classes), i)}) has no export detection "
                f"of the same class with a box within {box_tol} px{nearest}"
            )
            return message, max_box, max_score
        box_diff, j = close[0]
        score_diff = abs(float(a_scores[j]) - float(e_scores[i]))
        if score_diff > score_tol:
            message = (
                f"eager detection {i} ({_describe((e_boxes, e_scores, e_classes), i)}) has score "
                f"{float(a_scores[j]):.6f} in the export (differs by {score_diff:.3g} > {score_tol})"
            )
            return message, max_box, max_score
        max_box, max_score = max(max_box, box_diff), max(max_score, score_diff)
        unmatched.remove(j)
    if unmatched:
        j = unmatched[0]
        message = (
            f"the export has {len(a_scores)} detections, eager {len(e_scores)}; export detection {j} "
            f"({_describe((a_boxes, a_scores, a_classes), j)}) is not an eager one"
        )
        return message, max_box, max_score
    return None, max_box, max_score


def run_exported(path: str, samples: Sequence[Sample], timeout: float = 600) -> List[Detections]:
    """Run the exported file on ``samples`` in a new Python process (``python -I``, i.e.
    without the working directory or PYTHONPATH on the path) with ``d2lite`` and ``rtmdet``
    imports forbidden; returns its outputs.

    Raises:
        ExportCheckError: the process failed (its last output lines are in the message).
    """
    with tempfile.TemporaryDirectory(prefix="d2lite_export_check_") as tmp:
        inputs, outputs = os.path.join(tmp, "inputs.pt"), os.path.join(tmp, "outputs.pt")
        torch.save([(s.image.cpu(), s.original_size()) for s in samples], inputs)
        cmd = [sys.executable, "-I", runtime.__file__, path, inputs, outputs, "--forbid-import", "d2lite,rtmdet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ExportCheckError(f"loading/running {path} in a new process failed: {' | '.join(tail)}")
        return torch.load(outputs, weights_only=True)


@dataclass
class CheckReport:
    """What :func:`check_export` compared."""

    num_images: int
    num_detections: int
    max_box_diff: float
    max_score_diff: float


def check_export(model: nn.Module, path: str, samples: Iterable[Sample]) -> CheckReport:
    """Compare the export at ``path`` with the eager ``model`` on ``samples``.

    Raises:
        ExportCheckError: naming the export, the image and the first mismatching detection.
    """
    samples = list(samples)
    if not samples:
        raise ExportCheckError("no sample images to check the export with")
    exported = run_exported(path, samples)
    num_dets, max_box, max_score = 0, 0.0, 0.0
    for sample, actual in zip(samples, exported):
        expected = eager_detections(model, sample)
        mismatch, box_diff, score_diff = _match(expected, actual, BOX_TOL, SCORE_TOL)
        if mismatch is not None:
            size = f"{sample.image.shape[1]}x{sample.image.shape[2]}"
            raise ExportCheckError(
                f"{os.path.basename(path)} differs from the eager model on {sample.name} ({size}): {mismatch}"
            )
        num_dets += len(expected[1])
        max_box, max_score = max(max_box, box_diff), max(max_score, score_diff)
    return CheckReport(len(samples), num_dets, max_box, max_score)
