import math

import pytest
import torch

from d2lite.layers import ShapeSpec
from d2lite.modeling import (
    FPN,
    BasicBlock,
    BasicStem,
    Box2BoxTransform,
    DefaultAnchorGenerator,
    Matcher,
    ResNet,
    RetinaNet,
)
from d2lite.modeling.backbone.fpn import LastLevelP6P7
from d2lite.modeling.meta_arch.retinanet import RetinaNetHead
from d2lite.structures import Boxes, Instances
from d2lite.utils.events import EventStorage

ANCHOR_SIZES = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def build_r50_retinanet(num_classes=80):
    """Built like detectron2's configs/common/models/retinanet.py (+ freeze_at=2 of the 1x config)."""
    bottom_up = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=LastLevelP6P7(in_channels=2048, out_channels=256),
    )
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes=num_classes,
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        num_anchors=9,
    )
    return RetinaNet(
        backbone=backbone,
        head=head,
        anchor_generator=DefaultAnchorGenerator(
            sizes=ANCHOR_SIZES, aspect_ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128], offset=0.0
        ),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=Matcher(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        focal_loss_alpha=0.25,
        focal_loss_gamma=2.0,
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[1.0, 1.0, 1.0],
        input_format="BGR",
    )


def build_tiny_retinanet(num_classes=3, **kwargs):
    """ResNet-18-style (BasicBlock) with narrow channels, FPN P3-P7; for fast CPU tests."""
    torch.manual_seed(0)
    chans = [16, 32, 64, 128]
    stages = [
        ResNet.make_stage(BasicBlock, 1, in_channels=i, out_channels=o, stride_per_block=[s], norm="BN")
        for i, o, s in zip([16] + chans[:-1], chans, [1, 2, 2, 2])
    ]
    bottom_up = ResNet(BasicStem(3, 16, norm="BN"), stages, out_features=["res3", "res4", "res5"])
    backbone = FPN(bottom_up, ["res3", "res4", "res5"], 32, top_block=LastLevelP6P7(128, 32))
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=32)] * 5, num_classes=num_classes, num_anchors=9, conv_dims=[32, 32]
    )
    args = dict(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128],
            offset=0.0,
        ),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
    )
    args.update(kwargs)
    return RetinaNet(**args)


def _image(h, w, boxes, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 50, (3, h, w), generator=g).float()
    for (x0, y0, x1, y1), c in zip(boxes, classes):
        img[:, int(y0) : int(y1), int(x0) : int(x1)] = 200.0 + 20 * c  # bright rectangles
    inst = Instances(
        (h, w),
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )
    return {"image": img, "instances": inst, "height": h, "width": w}


def _batch():
    return [
        _image(64, 96, [[8.0, 8.0, 40.0, 36.0], [50.0, 20.0, 90.0, 60.0]], [0, 2], seed=1),
        _image(80, 64, [[10.0, 30.0, 50.0, 70.0]], [1], seed=2),
    ]


# --------------------------------------------------------------------------- head / structure


def test_head_prior_bias_and_init():
    head = RetinaNetHead(input_shape=[ShapeSpec(channels=64)] * 2, num_classes=80, num_anchors=9, conv_dims=[64] * 4)
    assert torch.allclose(head.cls_score.bias, torch.full((720,), -4.59511985))
    assert -(math.log((1 - 0.01) / 0.01)) == pytest.approx(-4.59511985)
    assert torch.count_nonzero(head.bbox_pred.bias) == 0
    assert torch.count_nonzero(head.cls_subnet[0].bias) == 0
    w = torch.cat([head.cls_subnet[0].weight.flatten(), head.bbox_subnet[6].weight.flatten()])
    assert w.std().item() == pytest.approx(0.01, rel=0.05)
    assert abs(w.mean().item()) < 1e-3
    logits, deltas = head([torch.zeros(2, 64, 4, 6), torch.zeros(2, 64, 2, 3)])
    assert [tuple(x.shape) for x in logits] == [(2, 720, 4, 6), (2, 720, 2, 3)]
    assert [tuple(x.shape) for x in deltas] == [(2, 36, 4, 6), (2, 36, 2, 3)]
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=32)], num_classes=2, num_anchors=1, conv_dims=[32], prior_prob=0.5, norm="GN"
    )
    assert torch.allclose(head.cls_score.bias, torch.zeros(2))
    assert [type(m).__name__ for m in head.cls_subnet] == ["Conv2d", "GroupNorm", "ReLU"]


def test_r50_fpn_state_dict_keys_and_parameter_count():
    model = build_r50_retinanet()
    sd = model.state_dict()
    expected_shapes = {
        "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.bottom_up.stem.conv1.norm.running_mean": (64,),
        "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.bottom_up.res2.0.shortcut.norm.bias": (256,),
        "backbone.bottom_up.res3.0.conv1.weight": (128, 256, 1, 1),
        "backbone.bottom_up.res4.5.conv2.weight": (256, 256, 3, 3),
        "backbone.bottom_up.res5.2.conv3.norm.weight": (2048,),
        "backbone.fpn_lateral3.weight": (256, 512, 1, 1),
        "backbone.fpn_output5.bias": (256,),
        "backbone.top_block.p6.weight": (256, 2048, 3, 3),
        "backbone.top_block.p7.bias": (256,),
        "head.cls_subnet.0.weight": (256, 256, 3, 3),
        "head.cls_subnet.6.bias": (256,),
        "head.bbox_subnet.0.weight": (256, 256, 3, 3),
        "head.cls_score.weight": (720, 256, 3, 3),
        "head.bbox_pred.bias": (36,),
    }
    for k, shape in expected_shapes.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    # buffers that detectron2 does not save
    assert not any("pixel_" in k or "anchor" in k for k in sd)
    assert "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked" not in sd  # FrozenBN
    assert "backbone.bottom_up.res5.0.shortcut.norm.running_var" in sd
    assert not any(k.startswith("backbone.bottom_up.res6") or "linear" in k for k in sd)

    # Hand count (80 classes): ResNet-50 convs 23,454,912 (25,557,032 minus fc 2,049,000
    # minus BN affine 53,120); FPN laterals 131,328 + 262,400 + 524,544, outputs
    # 3 * 590,080, P6 4,718,848, P7 590,080; head 8 * 590,080 + cls 1,659,600 + box 82,980.
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == 23_454_912 + 7_997_440 + 6_463_220 == 37_915_572
    frozen_bn_affine = sum(v.numel() for k, v in sd.items() if k.endswith("norm.weight") or k.endswith("norm.bias"))
    assert frozen_bn_affine == 53_120
    assert num_params + frozen_bn_affine == 37_968_692  # the "37.97M" incl. FrozenBN weight/bias
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # freeze_at=2: stem (9,408) and res2 (212,992) are frozen
    assert num_params - trainable == 9_408 + 212_992


# --------------------------------------------------------------------------- labels


def test_label_anchors_hand_computed():
    model = build_tiny_retinanet(num_classes=5)
    anchors = [
        Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 22.0]])),
        Boxes(torch.tensor([[0.0, 0.0, 30.0, 30.0], [100.0, 100.0, 110.0, 110.0]])),
    ]
    gt = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]])), gt_classes=torch.tensor([3]))
    empty = Instances((128, 128), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    labels, boxes = model.label_anchors(anchors, [gt, empty])
    # IoU: 1.0 -> fg, 0.5 -> fg, 100/220 -> ignore, 100/900 -> bg, 0 -> bg
    assert labels[0].tolist() == [3, 3, -1, 5, 5]
    assert torch.equal(boxes[0][:2], torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2))
    assert labels[1].tolist() == [5] * 5
    assert boxes[1].shape == (5, 4)


def test_label_anchors_ignores_zero_area_gt():
    model = build_tiny_retinanet(num_classes=5)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]))]
    gt = Instances(
        (128, 128),
        gt_boxes=Boxes(torch.tensor([[20.0, 20.0, 20.0, 40.0], [0.0, 0.0, 10.0, 10.0]])),
        gt_classes=torch.tensor([1, 2]),
    )
    labels, boxes = model.label_anchors(anchors, [gt])
    # the degenerate box would otherwise turn anchor 1 into a foreground (low-quality match at IoU 0)
    assert labels[0].tolist() == [2, 5]


# --------------------------------------------------------------------------- training


def test_training_loss_decreases_and_storage():
    model = build_tiny_retinanet()
    model.train()
    batch = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    with EventStorage(0) as storage:
        for it in range(30):
            loss_dict = model(batch)
            loss = sum(loss_dict.values())
            assert torch.isfinite(loss), (it, loss_dict)
            opt.zero_grad()
            loss.backward()
            opt.step()
            # The losses are divided by an EMA of #foreground that starts at 100 and moves
            # towards the true #foreground; compare the summed (unnormalized) losses.
            losses.append(loss.item() * model.loss_normalizer)
            storage.step()
        assert storage.history("num_pos_anchors").latest() > 0
    assert set(loss_dict) == {"loss_cls", "loss_box_reg"}
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses  # ~38.5 -> ~27.4 with this seed


def test_num_pos_anchors_and_normalizer():
    model = build_tiny_retinanet()
    batch = _batch()
    with EventStorage(0) as storage:
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        anchors = model.anchor_generator(features)
        gt_labels, _ = model.label_anchors(anchors, [x["instances"] for x in batch])
        num_pos = sum(int(((g >= 0) & (g != model.num_classes)).sum()) for g in gt_labels)
        assert num_pos > 0
        model(batch)
        assert storage.history("num_pos_anchors").latest() == pytest.approx(num_pos / 2)
        assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * num_pos)
        model(batch)
        assert model.loss_normalizer == pytest.approx(0.9 * (0.9 * 100 + 0.1 * num_pos) + 0.1 * num_pos)


def test_loss_values_match_manual_computation():
    from d2lite.layers import sigmoid_focal_loss, smooth_l1_loss

    model = build_tiny_retinanet()
    batch = _batch()
    with EventStorage(0):
        loss_dict = model(batch)
        images = model.preprocess_image(batch)
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        logits, deltas = model.head(feats)
        anchors = model.anchor_generator(feats)
        gt_labels, gt_boxes = model.label_anchors(anchors, [x["instances"] for x in batch])
    K = model.num_classes
    # (N, A*K, H, W) -> (N, H*W*A, K) by hand
    logits = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, K) for x in logits], dim=1)
    deltas = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, 4) for x in deltas], dim=1)
    labels = torch.stack(gt_labels)
    valid, pos = labels >= 0, (labels >= 0) & (labels < K)
    target = torch.zeros_like(logits)
    target[pos] = torch.nn.functional.one_hot(labels[pos], K).float()
    normalizer = 0.9 * 100 + 0.1 * int(pos.sum())
    cls = sigmoid_focal_loss(logits[valid], target[valid], alpha=0.25, gamma=2.0, reduction="sum") / normalizer
    a = Boxes.cat(anchors).tensor
    gt_d = torch.stack([model.box2box_transform.get_deltas(a, b) for b in gt_boxes])
    box = smooth_l1_loss(deltas[pos], gt_d[pos], beta=0.0, reduction="sum") / normalizer
    assert loss_dict["loss_cls"].item() == pytest.approx(cls.item(), rel=1e-4)
    assert loss_dict["loss_box_reg"].item() == pytest.approx(box.item(), rel=1e-4)


@pytest.mark.parametrize("loss_type", ["giou", "diou", "ciou", "smooth_l1"])
def test_box_reg_loss_types_train(loss_type):
    model = build_tiny_retinanet(box_reg_loss_type=loss_type, smooth_l1_beta=0.1)
    with EventStorage(0):
        loss_dict = model(_batch())
    assert loss_dict["loss_box_reg"].item() > 0
    sum(loss_dict.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_empty_gt_images():
    model = build_tiny_retinanet()
    batch = [_image(64, 64, [], [], seed=3), _image(64, 96, [], [], seed=4)]
    with EventStorage(0) as storage:
        loss_dict = model(batch)
        assert storage.history("num_pos_anchors").latest() == 0
    assert loss_dict["loss_box_reg"].item() == 0.0
    assert torch.isfinite(loss_dict["loss_cls"]) and loss_dict["loss_cls"].item() > 0
    sum(loss_dict.values()).backward()
    assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * 1)


def test_degenerate_gt_boxes_no_nan():
    model = build_tiny_retinanet()
    batch = [
        _image(64, 64, [[10.0, 10.0, 10.0, 30.0], [5.0, 5.0, 40.0, 40.0]], [0, 1], seed=5),
        _image(64, 64, [[20.0, 20.0, 50.0, 20.0]], [2], seed=6),  # only a zero-height box
    ]
    for loss_type in ("smooth_l1", "giou"):
        model.box_reg_loss_type = loss_type
        model.zero_grad()
        with EventStorage(0):
            loss_dict = model(batch)
        loss = sum(loss_dict.values())
        assert torch.isfinite(loss), loss_dict
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_vis_period_puts_image():
    model = build_tiny_retinanet(vis_period=1, test_score_thresh=0.0)
    with EventStorage(0) as storage:
        model(_batch())
        ((name, img, it),) = storage.vis_data
    assert img.shape == (3, 128, 96) and 0 <= img.min() and img.max() <= 1


# --------------------------------------------------------------------------- inference


def test_inference_in_original_coordinates():
    model = build_tiny_retinanet(test_score_thresh=0.0, test_topk_candidates=50, max_detections_per_image=30).eval()
    img = _image(64, 96, [[8.0, 8.0, 40.0, 36.0]], [0])["image"]
    with torch.no_grad():
        small = model([{"image": img}])[0]["instances"]
        big = model([{"image": img, "height": 128, "width": 192}])[0]["instances"]
    assert small.image_size == (64, 96) and big.image_size == (128, 192)
    assert len(small) == 30 and len(big) == len(small)
    assert torch.allclose(big.pred_boxes.tensor, small.pred_boxes.tensor * 2, atol=1e-3)
    assert torch.equal(big.pred_classes, small.pred_classes)
    assert torch.allclose(big.scores, small.scores)
    b = big.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 192).all() and (b[:, 3] <= 128).all()
    assert small.pred_classes.dtype == torch.int64 and (small.pred_classes < 3).all()


def test_inference_single_image_hand_made():
    model = build_tiny_retinanet(num_classes=2, test_score_thresh=0.05, test_nms_thresh=0.5, max_detections_per_image=2)
    anchors = [
        Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])),
        Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0]])),
    ]
    scores = [torch.tensor([[0.9, 0.01], [0.8, 0.3], [0.04, 0.6]]), torch.tensor([[0.2, 0.0]])]
    deltas = [torch.zeros(3, 4), torch.tensor([[0.0, 0.0, math.log(0.5), math.log(0.5)]])]
    out = model.inference_single_image(anchors, scores, deltas, (64, 64))
    # candidates > 0.05: (a0,c0,.9) (a1,c0,.8 suppressed by a0) (a1,c1,.3) (a2,c1,.6) (lvl1 a0,c0,.2 -> [10,10,30,30])
    # after NMS: .9, .6, .3, .2 -> keep top 2
    assert out.scores.tolist() == pytest.approx([0.9, 0.6])
    assert out.pred_classes.tolist() == [0, 1]
    assert torch.allclose(out.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]))
    model.max_detections_per_image = 10
    out = model.inference_single_image(anchors, scores, deltas, (64, 64))
    assert out.scores.tolist() == pytest.approx([0.9, 0.6, 0.3, 0.2])
    assert torch.allclose(out.pred_boxes.tensor[3], torch.tensor([10.0, 10.0, 30.0, 30.0]))
    model.test_topk_candidates = 1  # one candidate per level
    out = model.inference_single_image(anchors, scores, deltas, (64, 64))
    assert out.scores.tolist() == pytest.approx([0.9, 0.2])


# --------------------------------------------------------------------------- input handling


def test_preprocess_normalizes_in_input_order_and_pads():
    model = build_tiny_retinanet(pixel_mean=[1.0, 2.0, 3.0], pixel_std=[1.0, 2.0, 4.0], input_format="RGB")
    img = torch.full((3, 40, 50), 9.0)
    images = model.preprocess_image([{"image": img}])
    assert images.tensor.shape == (1, 3, 64, 64)  # padded to the FPN's size_divisibility (32)
    assert images.image_sizes[0] == (40, 50)
    assert images.tensor[0, :, 0, 0].tolist() == [8.0, 3.5, 1.5]


def test_bad_input():
    model = build_tiny_retinanet()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.zeros(3, 32, 32)}])
    with pytest.raises(ValueError, match="C=3"):
        model([{"image": torch.zeros(1, 32, 32), "instances": None}])
    with pytest.raises(ValueError, match="'image'"):
        model([{"instances": None}])
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        build_tiny_retinanet(box_reg_loss_type="l1")
    with pytest.raises(ValueError, match="input_format"):
        build_tiny_retinanet(input_format="YUV")
    with pytest.raises(ValueError, match="head_in_features"):
        build_tiny_retinanet(head_in_features=["p2"])


def test_bad_gt_classes():
    model = build_tiny_retinanet(num_classes=3)
    batch = [_image(64, 64, [[5.0, 5.0, 40.0, 40.0]], [3], seed=7)]
    with EventStorage(0), pytest.raises(ValueError, match="image 0 has gt_classes"):
        model(batch)


def test_non_finite_input():
    model = build_tiny_retinanet()
    batch = _batch()
    batch[0]["image"][0, 3, 3] = float("nan")
    with EventStorage(0):
        loss_dict = model(batch)
    # NaN propagates to the loss (the trainer's finiteness check reports it); it is not masked
    assert not torch.isfinite(loss_dict["loss_cls"])
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])[0]["instances"]
    assert torch.isfinite(out.pred_boxes.tensor).all() and torch.isfinite(out.scores).all()


@pytest.mark.parametrize("num_pass", [30, 5000])
def test_decode_per_level_same_pairs_whether_few_or_most_pass(num_pass):
    """Threshold then top-k, or (when more than k pass) top-k of all pairs: the same
    (anchor, class, score) triples as detectron2's threshold + nonzero + topk."""
    model = build_tiny_retinanet()
    g = torch.Generator().manual_seed(0)
    num_anchors, k = 2000, model.num_classes
    scores = torch.rand(num_anchors, k, generator=g) * 0.5
    flat = scores.flatten()
    flat[torch.randperm(flat.numel(), generator=g)[:num_pass]] += 0.5  # these pass 0.5
    anchors = Boxes(torch.rand(num_anchors, 4, generator=g).cumsum(1) * 10)
    deltas = torch.zeros(num_anchors, 4)
    out = model._decode_per_level_predictions(anchors, scores, deltas, 0.5, 100, (64, 64))
    keep = scores > 0.5
    ref_scores, idx = scores[keep].topk(min(100, int(keep.sum())))
    ref_pairs = torch.nonzero(keep)[idx]
    assert torch.equal(out.scores, ref_scores)
    assert torch.equal(out.pred_classes, ref_pairs[:, 1])
    assert torch.allclose(out.pred_boxes.tensor, anchors.tensor[ref_pairs[:, 0]], atol=1e-5)  # zero deltas
