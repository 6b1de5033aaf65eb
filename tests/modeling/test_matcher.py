import pytest
import torch

from d2lite.modeling.matcher import Matcher


def test_thresholds_bucket_predictions_lower_bound_inclusive():
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)
    iou = torch.tensor(
        [
            [0.1, 0.45, 0.7, 0.0],
            [0.3, 0.2, 0.6, 0.5],
        ]
    )
    matches, labels = matcher(iou)
    assert matches.tolist() == [1, 0, 0, 1]
    # 0.3 -> bg, 0.45 -> ignore, 0.7 -> fg, 0.5 (exactly the threshold) -> fg
    assert labels.tolist() == [0, -1, 1, 1]
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8


def test_low_quality_matches_mark_all_ties():
    iou = torch.tensor(
        [
            [0.1, 0.3, 0.3, 0.0],
            [0.2, 0.0, 0.0, 0.35],
        ]
    )
    _, labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)(iou)
    assert labels.tolist() == [0, 0, 0, 0]

    matches, labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    # gt0's best quality 0.3 is shared by anchors 1 and 2: both become positive.
    assert labels.tolist() == [0, 1, 1, 1]
    assert matches.tolist() == [1, 0, 0, 1]


def test_low_quality_match_keeps_argmax_gt():
    # Anchor 0 is gt0's best anchor, but its own best gt is gt1: label 1, match stays gt1.
    iou = torch.tensor([[0.3, 0.0], [0.32, 0.1]])
    matches, labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 0]
    assert matches.tolist() == [1, 1]


def test_empty_gt_gives_lowest_label():
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = matcher(torch.zeros((0, 5)))
    assert matches.tolist() == [0] * 5
    assert labels.tolist() == [0] * 5
    assert labels.dtype == torch.int8

    matches, labels = Matcher([0.3, 0.7], [-1, 0, 1])(torch.zeros((0, 3)))
    assert labels.tolist() == [-1, -1, -1]


def test_rpn_style_three_thresholds():
    matcher = Matcher([0.3, 0.7], [0, -1, 1])
    matches, labels = matcher(torch.tensor([[0.29, 0.3, 0.69, 0.7, 1.0]]))
    assert labels.tolist() == [0, -1, -1, 1, 1]


@pytest.mark.parametrize(
    "thresholds,labels",
    [([0.0, 0.5], [0, -1, 1]), ([0.5, 0.4], [0, -1, 1]), ([0.4, 0.5], [0, 1]), ([0.4], [0, 2])],
)
def test_bad_arguments(thresholds, labels):
    with pytest.raises(ValueError):
        Matcher(thresholds, labels)


def test_bad_matrix():
    matcher = Matcher([0.5], [0, 1])
    with pytest.raises(ValueError, match="2-D"):
        matcher(torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        matcher(torch.tensor([[-0.1, 0.5]]))
