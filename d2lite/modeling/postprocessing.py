"""Rescale detector outputs to the resolution the user asked for."""

import torch

from d2lite.structures import Instances

__all__ = ["detector_postprocess"]


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """
    Resize the predicted boxes of ``results`` (predicted on an image of size
    ``results.image_size``, e.g. the resized network input) to (output_height,
    output_width) (e.g. the original image), clip them to that size and drop boxes that
    became empty.

    Args:
        results: predictions with "pred_boxes" (or "proposal_boxes") in input-image pixels.
        output_height, output_width: desired output resolution.

    Returns:
        a new Instances of image_size (output_height, output_width).
    """
    if isinstance(output_width, torch.Tensor):
        # Keep tensors (tracing friendly) but compute the scale in float.
        output_width_tmp = output_width.float()
        output_height_tmp = output_height.float()
        new_size = torch.stack([output_height, output_width])
    else:
        new_size = (output_height, output_width)
        output_width_tmp = output_width
        output_height_tmp = output_height

    scale_x = output_width_tmp / results.image_size[1]
    scale_y = output_height_tmp / results.image_size[0]
    results = Instances(new_size, **results.get_fields())

    if results.has("pred_boxes"):
        output_boxes = results.pred_boxes
    elif results.has("proposal_boxes"):
        output_boxes = results.proposal_boxes
    else:
        raise ValueError(
            "detector_postprocess: results must contain 'pred_boxes' or 'proposal_boxes', "
            f"got fields {list(results.get_fields().keys())}"
        )
    output_boxes.scale(scale_x, scale_y)
    output_boxes.clip(results.image_size)
    return results[output_boxes.nonempty()]
