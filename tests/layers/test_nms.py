import pytest
import torch

from d2lite.layers import batched_nms, nms


def test_batched_nms_keeps_boxes_of_different_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # box 1 overlaps box 0 with IoU 0.81 (same class) -> suppressed; box 2 is another class.
    keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 2, 3]
    # all one class: box 2 is also suppressed
    assert batched_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5).tolist() == [0, 3]
    # threshold above the IoU keeps everything, sorted by score
    assert batched_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.99).tolist() == [0, 1, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]


def test_batched_nms_half_precision_and_empty():
    boxes = torch.tensor([[0.0, 0.0, 1000.0, 1000.0], [0.0, 0.0, 1000.0, 1000.0]]).half()
    scores = torch.tensor([0.5, 0.9]).half()
    assert batched_nms(boxes, scores, torch.tensor([3, 70]), 0.5).tolist() == [1, 0]
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.numel() == 0 and empty.dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        batched_nms(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, dtype=torch.long), 0.5)
