"""d2lite.export.batched_nms keeps what d2lite.layers.batched_nms keeps, in the same order,
on both of torchvision's paths, eager, scripted and exported."""

import pytest
import torch

from d2lite.export.nms import batched_nms, nms_shape_fix
from d2lite.layers import batched_nms as eager_batched_nms

# onepass: the outcome does not depend on the float path (make test-1thread skips it).
pytestmark = pytest.mark.onepass

NUM_CLASSES = 3


def random_boxes(n, seed, score_levels=20):
    """``n`` boxes on a 200x200 image with many equal scores (ties) and overlaps."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    scores = torch.randint(0, score_levels, (n,), generator=g).float() / score_levels
    classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return torch.cat([xy, xy + wh], dim=1), scores, classes


class NMS(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.num_classes = NUM_CLASSES

    def forward(self, boxes, scores, classes):
        return batched_nms(boxes, scores, classes, 0.5, self.num_classes)


# 1000 boxes: torchvision's coordinate trick; 1001 and more: one NMS per class.
SIZES = [0, 1, 2, 7, 999, 1000, 1001, 2500]


def test_hand_computed_example():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = torch.tensor([0, 0, 1, 0, 0])
    # class 0: box 4 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU 81/109 = 0.74); 3 is apart. class 1: box 2.
    assert batched_nms(boxes, scores, classes, 0.5, 2).tolist() == [4, 2, 3]


@pytest.mark.parametrize("n", SIZES)
def test_equal_to_eager_on_both_paths(n):
    boxes, scores, classes = random_boxes(n, seed=n)
    expected = eager_batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(batched_nms(boxes, scores, classes, 0.5, NUM_CLASSES), expected)


def test_scripted_equal_to_eager():
    scripted = torch.jit.script(NMS())
    for n in SIZES:
        boxes, scores, classes = random_boxes(n, seed=100 + n)
        assert torch.equal(scripted(boxes, scores, classes), eager_batched_nms(boxes, scores, classes, 0.5)), n


@pytest.mark.slow
def test_exported_program_equal_to_eager_also_for_zero_and_one_kept_box(tmp_path):
    # torchvision's shape rule for nms says "at least 2 kept boxes"; nms_shape_fix lifts it.
    n = torch.export.Dim("n", min=0, max=100_000)
    with nms_shape_fix():
        program = torch.export.export(NMS(), random_boxes(50, seed=0), dynamic_shapes=({0: n}, {0: n}, {0: n}))
    torch.export.save(program, tmp_path / "nms.pt2")
    loaded = torch.export.load(tmp_path / "nms.pt2").module()
    for size in SIZES:
        boxes, scores, classes = random_boxes(size, seed=200 + size)
        assert torch.equal(loaded(boxes, scores, classes), eager_batched_nms(boxes, scores, classes, 0.5)), size
