import numpy as np
import torch

from d2lite.structures import Boxes
from d2lite.utils.visualizer import draw_boxes, image_to_rgb


def test_draw_boxes_outlines_box_and_keeps_input():
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    out = draw_boxes(image, Boxes(torch.tensor([[10.0, 12.0, 30.0, 32.0]])), classes=[1], line_width=1)
    assert image.sum() == 0  # input untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[12, 20].sum() > 0 and out[32, 20].sum() > 0  # top and bottom edges
    assert out[20, 10].sum() > 0 and out[20, 30].sum() > 0  # left and right edges
    assert out[22, 20].sum() == 0  # inside stays empty
    assert out[5, 40].sum() == 0


def test_draw_boxes_labels_with_names_and_scores():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    plain = draw_boxes(image, np.array([[20.0, 30.0, 60.0, 50.0]]), classes=[0])
    labelled = draw_boxes(
        image, np.array([[20.0, 30.0, 60.0, 50.0]]), classes=[0], scores=[0.9], class_names=["circle"]
    )
    # The label is drawn above the box.
    assert labelled[19:30, 20:60].sum() > plain[19:30, 20:60].sum()


def test_image_to_rgb_swaps_bgr():
    bgr = torch.zeros(3, 2, 2)
    bgr[0] = 255  # blue channel in BGR
    rgb = image_to_rgb(bgr, "BGR")
    assert rgb.shape == (2, 2, 3) and rgb[0, 0, 2] == 255 and rgb[0, 0, 0] == 0


def _overlap(a, b):
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)


def test_layout_labels_inside_the_image_off_the_box_and_apart():
    from d2lite.utils.visualizer import layout_labels

    h, w = 120, 160
    boxes = [
        (0.0, 0.0, 40.0, 30.0),  # at the top-left corner: no room above
        (130.0, 100.0, 160.0, 120.0),  # at the bottom-right corner
        (60.0, 50.0, 100.0, 80.0),
        (62.0, 52.0, 102.0, 82.0),  # almost the same box: its label must go elsewhere
        (-20.0, 60.0, 10.0, 90.0),  # partly outside the image
    ]
    sizes = [(50.0, 12.0)] * len(boxes)
    rects = layout_labels(boxes, sizes, (h, w))
    for rect, size in zip(rects, sizes):
        assert 0 <= rect[0] and rect[2] <= w and 0 <= rect[1] and rect[3] <= h, rect
        assert (rect[2] - rect[0], rect[3] - rect[1]) == size
    for i in range(len(rects)):
        for j in range(i):
            assert _overlap(rects[i], rects[j]) == 0, (i, j, rects)
    assert rects[0] == (0.0, 30.0, 50.0, 42.0)  # below the corner box, not over it
    assert rects[2] == (60.0, 38.0, 110.0, 50.0)  # above its box
    assert _overlap(rects[2], boxes[2]) == 0 and _overlap(rects[3], boxes[3]) == 0
    assert rects[1][3] <= boxes[1][1]  # above the bottom-right box


def test_layout_labels_in_a_crowd_overlap_as_little_as_possible():
    from d2lite.utils.visualizer import layout_labels

    boxes = [(10.0, 10.0, 30.0, 30.0)] * 3
    rects = layout_labels(boxes, [(15.0, 8.0)] * 3, (40, 40))
    assert len(set(rects)) == 3  # three different places for three labels


def test_draw_boxes_one_label_for_several_classes_of_one_box():
    from PIL import Image, ImageDraw

    image = np.zeros((60, 240, 3), dtype=np.uint8)
    box = [30.0, 30.0, 70.0, 55.0]
    names = ["circle", "square", "triangle"]
    merged = draw_boxes(image, np.array([box, box]), classes=[1, 0], scores=[0.3, 0.8], class_names=names)
    # The same pixels as one label listing both classes by score, in the best class's colour.
    expected = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(expected)
    draw.rectangle(box, outline=(230, 25, 75), width=2)
    text = "circle 0.80, square 0.30"
    left, top, right, bottom = draw.textbbox((0, 0), text)
    lw, lh = right - left + 2, bottom - top + 2
    draw.rectangle([30, 30 - lh, 30 + lw - 1, 30 - 1], fill=(230, 25, 75))
    draw.text((30 + 1 - left, 30 - lh + 1 - top), text, fill=(0, 0, 0))
    assert np.array_equal(merged, np.asarray(expected))
