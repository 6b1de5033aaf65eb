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
