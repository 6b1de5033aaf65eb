"""DenseDetector as an extension point: a minimal subclass with its own head and decoding."""

import pytest
import torch
from torch import nn

from d2lite.modeling import Backbone, Box2BoxTransform, DefaultAnchorGenerator, DenseDetector
from d2lite.structures import Instances


class ToyBackbone(Backbone):
    """Two levels: average pooling by 8 ("s8") and 16 ("s16"), 3 channels."""

    def __init__(self, square=0):
        super().__init__()
        self._out_features = ["s16", "s8"]  # deliberately not sorted by stride
        self._out_feature_channels = {"s8": 3, "s16": 3}
        self._out_feature_strides = {"s8": 8, "s16": 16}
        self.square = square

    @property
    def size_divisibility(self):
        return 16

    @property
    def padding_constraints(self):
        return {"square_size": self.square}

    def forward(self, x):
        return {"s8": nn.functional.avg_pool2d(x, 8), "s16": nn.functional.avg_pool2d(x, 16)}


class ToyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls = nn.Conv2d(3, 2, 1)
        self.reg = nn.Conv2d(3, 4, 1)

    def forward(self, features):
        return [self.cls(f) for f in features], [self.reg(f) for f in features]


class ToyDetector(DenseDetector):
    def __init__(self, **kwargs):
        super().__init__(ToyBackbone(**kwargs), ToyHead(), pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])
        self.anchor_generator = DefaultAnchorGenerator(sizes=[[8], [16]], aspect_ratios=[[1.0]], strides=[8, 16])
        self.box2box_transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
        self.test_score_thresh = 0.5
        self.test_topk_candidates = 3

    def forward_training(self, images, features, predictions, gt_instances):
        logits, deltas = self._transpose_dense_predictions(predictions, [2, 4])
        normalizer = self._ema_update("my_normalizer", 10.0, 100.0)
        return {"loss": sum(x.sum() for x in logits + deltas) / normalizer}

    def forward_inference(self, images, features, predictions):
        logits, deltas = self._transpose_dense_predictions(predictions, [2, 4])
        anchors = self.anchor_generator(features)
        return [
            self._decode_multi_level_predictions(
                anchors,
                [x[i].sigmoid() for x in logits],
                [x[i] for x in deltas],
                self.test_score_thresh,
                self.test_topk_candidates,
                size,
            )
            for i, size in enumerate(images.image_sizes)
        ]


def test_head_in_features_default_sorted_by_stride():
    assert ToyDetector().head_in_features == ["s8", "s16"]


def test_transpose_order():
    det = ToyDetector()
    x = torch.arange(2 * 3 * 2 * 1 * 2, dtype=torch.float32).view(1, 6, 2, 2)  # A=3, K=2, H=W=2
    (out,) = det._transpose_dense_predictions([[x]], [2])
    assert out[0].shape == (1, 12, 2)
    # row i = location (h, w) major, then anchor a; value = x[0, a*K + k, h, w]
    assert out[0][0, 1].tolist() == [x[0, 2, 0, 0].item(), x[0, 3, 0, 0].item()]
    assert out[0][0, 3].tolist() == [x[0, 0, 0, 1].item(), x[0, 1, 0, 1].item()]
    with pytest.raises(ValueError):
        det._transpose_dense_predictions([[x]], [2, 4])


def test_ema_update():
    det = ToyDetector()
    assert det._ema_update("foo", 10.0, 100.0) == pytest.approx(91.0)
    assert det._ema_update("foo", 10.0, 100.0, momentum=0.5) == pytest.approx(50.5)


def test_training_and_inference_through_base_forward():
    det = ToyDetector(square=64)
    img = torch.rand(3, 40, 48) * 10
    inst = Instances((40, 48))
    loss = det([{"image": img, "instances": inst}])["loss"]
    assert det.my_normalizer == pytest.approx(91.0)
    assert torch.isfinite(loss)
    images = det.preprocess_image([{"image": img}])
    assert images.tensor.shape == (1, 3, 64, 64)  # square_size from padding_constraints

    det = ToyDetector()
    det.test_topk_candidates = 1000
    det.eval()
    with torch.no_grad():
        det.head.cls.weight.zero_()
        det.head.cls.bias.copy_(torch.tensor([2.0, -2.0]))  # class 0 p=0.88, class 1 p=0.12
        det.head.reg.weight.zero_()
        det.head.reg.bias.zero_()
        out = det([{"image": torch.rand(3, 48, 64), "height": 96, "width": 128}])[0]["instances"]
    # every anchor (6x8 of size 8 + 3x4 of size 16) gives one class-0 box = the anchor, scaled by 2
    assert out.image_size == (96, 128)
    assert len(out) == 48 + 12 and out.pred_classes.tolist() == [0] * 60
    assert out.scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item()] * 60)
    expected = [
        [2 * (8 * j + 4 - 4), 2 * (8 * i + 4 - 4), 2 * (8 * j + 8), 2 * (8 * i + 8)] for i in range(6) for j in range(8)
    ]
    expected += [[2 * 16 * j, 2 * 16 * i, 2 * (16 * j + 16), 2 * (16 * i + 16)] for i in range(3) for j in range(4)]
    got = torch.tensor(sorted(out.pred_boxes.tensor.tolist()))
    assert torch.allclose(got, torch.tensor(sorted(expected), dtype=torch.float32), atol=1e-4)
