"""DynamicSoftLabelAssigner on hand-made cases and against a loop-based reference
(mmdetection's algorithm: dense priors x gts x classes cost, Python loop over gts)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rtmdet import DynamicSoftLabelAssigner, MlvlPointGenerator, bbox_overlaps


def _priors(h, w, strides=(8,), dtype=torch.float32):
    gen = MlvlPointGenerator(strides, offset=0.0)
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    return torch.cat(gen.grid_priors(sizes, dtype=dtype, with_stride=True))


def _index_of(priors, x, y):
    return int(((priors[:, 0] == x) & (priors[:, 1] == y)).nonzero()[0, 0])


def reference_assign(scores, boxes, priors, gt_bboxes, gt_labels, radius=3.0, topk=13, iou_weight=3.0):
    """mmdetection 3.x DynamicSoftLabelAssigner.assign, written out with loops."""
    num_gt, n = gt_bboxes.shape[0], boxes.shape[0]
    gt_inds = torch.zeros(n, dtype=torch.long)
    labels = torch.full((n,), -1, dtype=torch.long)
    if num_gt == 0:
        return gt_inds, torch.zeros(n, dtype=boxes.dtype), labels
    lt = priors[:, None, :2] - gt_bboxes[:, :2]
    rb = gt_bboxes[:, 2:] - priors[:, None, :2]
    valid = torch.cat([lt, rb], -1).min(-1).values.gt(0).sum(1) > 0
    if valid.sum() == 0:
        return gt_inds, torch.zeros(n, dtype=boxes.dtype), labels
    vb, vs, vp = boxes[valid], scores[valid], priors[valid]
    num_valid = vb.shape[0]
    center = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2
    dist = (vp[:, None, :2] - center[None]).pow(2).sum(-1).sqrt() / vp[:, 2:3]
    prior_cost = torch.pow(10, dist - radius)
    ious = bbox_overlaps(vb, gt_bboxes)
    iou_cost = -torch.log(ious + 1e-7) * iou_weight
    onehot = F.one_hot(gt_labels, vs.shape[-1]).to(vs.dtype)[None].repeat(num_valid, 1, 1)
    vs3 = vs[:, None].repeat(1, num_gt, 1)
    soft = onehot * ious[..., None]
    cls_cost = (
        F.binary_cross_entropy_with_logits(vs3, soft, reduction="none") * (soft - vs3.sigmoid()).abs().pow(2)
    ).sum(-1)
    cost = cls_cost + iou_cost + prior_cost
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    k = min(topk, num_valid)
    dyn = torch.clamp(torch.topk(ious, k, dim=0)[0].sum(0).int(), min=1)
    for g in range(num_gt):
        _, pos = torch.topk(cost[:, g], k=int(dyn[g]), largest=False)
        matching[:, g][pos] = 1
    multi = matching.sum(1) > 1
    if multi.sum() > 0:
        argmin = cost[multi].argmin(1)
        matching[multi] *= 0
        matching[multi, argmin] = 1
    fg = matching.sum(1) > 0
    vidx = valid.nonzero()[:, 0]
    matched = matching[fg].argmax(1)
    gt_inds[vidx[fg]] = matched + 1
    labels[vidx[fg]] = gt_labels[matched]
    overlaps = torch.full((n,), -100000000.0, dtype=boxes.dtype)
    overlaps[vidx[fg]] = (matching * ious).sum(1)[fg]
    return gt_inds, overlaps, labels


def test_one_gt_dynamic_k_from_ious_and_nearest_priors_win():
    priors = _priors(64, 64)
    gt = torch.tensor([[5.0, 4.0, 28.0, 30.0]])  # centre (16.5, 17); 9 prior centres strictly inside
    half = torch.tensor([[5.0, 4.0, 16.5, 30.0]])  # IoU with gt exactly 0.5
    boxes = half.repeat(len(priors), 1)
    scores = torch.zeros(len(priors), 3)
    r = DynamicSoftLabelAssigner().assign(scores, boxes, priors, gt, torch.tensor([2]))
    # dynamic k = int(9 * 0.5) = 4; equal cls/IoU costs, so the 4 priors nearest the centre win
    expected = sorted(_index_of(priors, x, y) for x, y in [(16, 16), (16, 24), (24, 16), (8, 16)])
    pos = (r.gt_inds > 0).nonzero()[:, 0].tolist()
    assert pos == expected
    assert (r.gt_inds[pos] == 1).all() and (r.labels[pos] == 2).all()
    assert torch.allclose(r.max_overlaps[pos], torch.tensor(0.5))
    neg = r.gt_inds == 0
    assert (r.labels[neg] == -1).all() and (r.max_overlaps[neg] == -100000000).all()


def test_no_gt_all_background():
    priors = _priors(32, 32)
    r = DynamicSoftLabelAssigner().assign(
        torch.randn(len(priors), 4),
        torch.rand(len(priors), 4) * 10,
        priors,
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
    )
    assert r.num_gts == 0
    assert (r.gt_inds == 0).all() and (r.labels == -1).all() and (r.max_overlaps == 0).all()


@pytest.mark.parametrize("gt", [[1.0, 1.0, 7.0, 7.0], [8.0, 8.0, 16.0, 16.0]])
def test_gt_without_prior_centre_strictly_inside(gt):
    # [8, 8, 16, 16] has prior (8, 8) and (16, 16) on its border: not strictly inside
    priors = _priors(32, 32)
    boxes = torch.tensor([gt]).repeat(len(priors), 1)
    r = DynamicSoftLabelAssigner().assign(
        torch.zeros(len(priors), 2), boxes, priors, torch.tensor([gt]), torch.tensor([1])
    )
    assert (r.gt_inds == 0).all() and (r.labels == -1).all() and (r.max_overlaps == 0).all()


def test_prior_matched_to_two_gts_goes_to_min_cost_gt():
    priors = _priors(32, 32)
    gt_a = [12.0, 12.0, 20.0, 20.0]  # only prior (16, 16) is inside either gt
    gt_b = [10.0, 10.0, 19.0, 19.0]
    boxes = torch.tensor([gt_b]).repeat(len(priors), 1)  # prediction = gt_b: IoU 1 with b, 49/96 with a
    gts = torch.tensor([gt_a, gt_b])
    r = DynamicSoftLabelAssigner().assign(torch.zeros(len(priors), 2), boxes, priors, gts, torch.tensor([0, 1]))
    i = _index_of(priors, 16, 16)
    assert (r.gt_inds > 0).nonzero()[:, 0].tolist() == [i]
    # both gts pick the prior (k >= 1); the conflict goes to gt b (lower IoU cost), not the first gt
    assert int(r.gt_inds[i]) == 2 and int(r.labels[i]) == 1
    assert float(r.max_overlaps[i]) == pytest.approx(1.0)


def test_overlapping_gts_each_get_priors():
    priors = _priors(64, 64)
    gts = torch.tensor([[0.5, 0.5, 40.5, 40.5], [16.5, 16.5, 60.5, 60.5]])
    boxes = torch.cat([priors[:, :2] - 12, priors[:, :2] + 12], 1)
    scores = torch.zeros(len(priors), 2)
    r = DynamicSoftLabelAssigner().assign(scores, boxes, priors, gts, torch.tensor([0, 1]))
    ref = reference_assign(scores, boxes, priors, gts, torch.tensor([0, 1]))
    assert set(r.gt_inds.unique().tolist()) == {0, 1, 2}
    assert torch.equal(r.gt_inds, ref[0]) and torch.equal(r.labels, ref[2])


@pytest.mark.parametrize("seed", range(8))
def test_equals_loop_reference_on_random_cases(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    priors = _priors(128, 96, strides=(8, 16, 32), dtype=torch.float64)
    n = len(priors)
    num_gt = [1, 3, 7, 20, 2, 12, 30, 5][seed]
    xy = torch.rand(num_gt, 2, generator=g, dtype=torch.float64) * torch.tensor([80.0, 110.0], dtype=torch.float64)
    wh = torch.rand(num_gt, 2, generator=g, dtype=torch.float64) * 60 + 4
    gts = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, num_classes, (num_gt,), generator=g)
    dist = torch.rand(n, 4, generator=g, dtype=torch.float64) * 40
    boxes = torch.cat([priors[:, :2] - dist[:, :2], priors[:, :2] + dist[:, 2:]], 1)
    scores = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 2
    r = DynamicSoftLabelAssigner().assign(scores, boxes, priors, gts, labels)
    gt_inds, overlaps, ref_labels = reference_assign(scores, boxes, priors, gts, labels)
    assert (gt_inds > 0).sum() > 0
    assert torch.equal(r.gt_inds, gt_inds)
    assert torch.equal(r.labels, ref_labels)
    assert torch.allclose(r.max_overlaps.double(), overlaps)


def test_bad_input_is_rejected():
    a = DynamicSoftLabelAssigner()
    priors = _priors(16, 16)
    with pytest.raises(ValueError, match="gt_labels must be in"):
        a.assign(
            torch.zeros(len(priors), 2),
            torch.zeros(len(priors), 4),
            priors,
            torch.tensor([[0.0, 0, 9, 9]]),
            torch.tensor([2]),
        )
    with pytest.raises(ValueError, match="same length"):
        a.assign(
            torch.zeros(3, 2), torch.zeros(len(priors), 4), priors, torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([0])
        )
    with pytest.raises(ValueError, match="topk"):
        DynamicSoftLabelAssigner(topk=0)
