"""compare_detections: which differences are a mismatch, and how it is named."""

import torch

from d2lite.export.check import Sample, compare_detections


def dets(boxes, scores, classes):
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(classes)


EXPECTED = dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.9, 0.5, 0.5], [0, 1, 1])


def test_equal_and_within_tolerance_match():
    assert compare_detections(EXPECTED, EXPECTED) is None
    nudged = dets([[0, 0, 10.0009, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.90009, 0.5, 0.5], [0, 1, 1])
    assert compare_detections(EXPECTED, nudged) is None
    assert (
        compare_detections(dets([], [], []), (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
        is None
    )


def test_equal_scores_may_come_in_either_order():
    swapped = dets([[0, 0, 10, 10], [30, 30, 40, 50], [5, 5, 20, 20]], [0.9, 0.5, 0.5], [0, 1, 1])
    assert compare_detections(EXPECTED, swapped) is None


def test_box_score_class_and_count_mismatches_are_named():
    moved = dets([[0, 0, 10, 10], [5, 5, 20, 20.002], [30, 30, 40, 50]], [0.9, 0.5, 0.5], [0, 1, 1])
    msg = compare_detections(EXPECTED, moved)
    assert msg.startswith("eager detection 1 (class 1, score 0.500000, box [5.000, 5.000, 20.000, 20.000])")
    assert "nearest export box of that class differs by 0.002001 px" in msg

    rescored = dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.9, 0.5, 0.5002], [0, 1, 1])
    assert "eager detection 2" in compare_detections(EXPECTED, rescored) and "0.0002" in compare_detections(
        EXPECTED, rescored
    )

    relabelled = dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.9, 0.5, 0.5], [0, 1, 2])
    assert compare_detections(EXPECTED, relabelled).startswith("eager detection 2 (class 1")

    extra = dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50], [1, 1, 2, 2]], [0.9, 0.5, 0.5, 0.1], [0, 1, 1, 0])
    assert compare_detections(EXPECTED, extra).startswith("the export has 4 detections, eager 3; export detection 3")
    assert compare_detections(extra, EXPECTED).startswith("eager detection 3 (class 0")


def test_sample_from_dataset_dict():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    s = Sample.from_dataset_dict({"image": image, "height": 40, "width": 60, "file_name": "a.jpg"}, 0)
    assert (s.height, s.width, s.name) == (40, 60, "a.jpg") and s.original_size().tolist() == [40, 60]
    s = Sample.from_dataset_dict({"image": image}, 3)
    assert (s.height, s.width, s.name) == (20, 30, "test image 3")
