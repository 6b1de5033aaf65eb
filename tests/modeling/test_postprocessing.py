import pytest
import torch

from d2lite.modeling.postprocessing import detector_postprocess
from d2lite.structures import Boxes, Instances


def test_rescale_clip_and_drop_empty():
    r = Instances((50, 100))
    r.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 20.0, 30.0], [90.0, 40.0, 110.0, 60.0], [120.0, 0.0, 130.0, 10.0]]))
    r.scores = torch.tensor([0.9, 0.8, 0.7])
    out = detector_postprocess(r, 100, 300)  # scale x 3, y 2
    assert out.image_size == (100, 300)
    # third box lies fully outside the 100-px-wide input: clipped to zero width and dropped
    assert len(out) == 2
    assert torch.allclose(out.pred_boxes.tensor, torch.tensor([[30.0, 20.0, 60.0, 60.0], [270.0, 80.0, 300.0, 100.0]]))
    assert torch.allclose(out.scores, torch.tensor([0.9, 0.8]))


def test_requires_boxes():
    with pytest.raises(ValueError, match="pred_boxes"):
        detector_postprocess(Instances((10, 10), scores=torch.zeros(1)), 20, 20)
