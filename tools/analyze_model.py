#!/usr/bin/env python
"""Parameter count and FLOPs of a LazyConfig's model (through fvcore).

Examples::

    python tools/analyze_model.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py
    python tools/analyze_model.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --tasks parameter
    python tools/analyze_model.py --config-file configs/COCO-Detection/retinanet_R_50_FPN_1x.py --input-size 800 1216 train.device=cpu

FLOPs count the backbone and head (post-processing excluded), one image of
``--input-size`` (H W, padded to the backbone's size divisibility), or of the
first ``--num-inputs`` test images when ``--use-test-data`` is given. Without
either, the input is the median size of the config's test images
(``dataloader.test.dataset``) after its test augmentations
(``dataloader.test.mapper.augmentations``); 480x640 when the dataset cannot be read.
fvcore counts one fused multiply-add as one flop.
"""

import argparse
import sys
import warnings
from typing import Tuple

import numpy as np
import torch
from torch import nn

from d2lite.config import instantiate
from d2lite.data import transforms as T
from d2lite.engine.lazy_train import ConfigError, load_config

with warnings.catch_warnings():
    # fvcore.nn scripts its focal loss at import time; torch deprecates torch.jit.script.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count, parameter_count_table

FALLBACK_SIZE = (480, 640)  # COCO's most common image size


class DenseForward(nn.Module):
    """backbone + head of a DenseDetector on an already normalised (N, C, H, W) batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        features = self.model.backbone(images)
        return self.model.head([features[f] for f in self.model.head_in_features])


def typical_input_size(cfg) -> Tuple[int, int, str]:
    """(H, W, description) of a typical test input: the median (height, width) of the
    test dataset's images, resized by the test augmentations."""
    mapper = cfg.dataloader.test.get("mapper", {})
    augmentations = T.AugmentationList([instantiate(a) for a in mapper.get("augmentations", [])])
    try:
        dicts = instantiate(cfg.dataloader.test.dataset)
        size = (int(np.median([d["height"] for d in dicts])), int(np.median([d["width"] for d in dicts])))
        source = f"the median test image, {size[0]}x{size[1]}"
    except Exception as e:  # e.g. COCO not downloaded
        reason = type(e.__cause__ or e).__name__
        size, source = (
            FALLBACK_SIZE,
            f"a {FALLBACK_SIZE[0]}x{FALLBACK_SIZE[1]} image (test dataset not readable: {reason})",
        )
    aug_input = T.AugInput(np.zeros((*size, 3), dtype=np.uint8))
    augmentations(aug_input)
    h, w = aug_input.image.shape[:2]
    return h, w, f"{source}, after the config's test augmentations"


def _inputs(cfg, model, args):
    if args.use_test_data:
        loader = instantiate(cfg.dataloader.test)
        for i, batch in enumerate(loader):
            if i >= args.num_inputs:
                break
            yield model.preprocess_image(batch).tensor
    else:
        h, w = args.input_size
        yield model.preprocess_image([{"image": torch.zeros(3, h, w)}]).tensor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter", "flop"])
    parser.add_argument(
        "--input-size", nargs=2, type=int, default=None, metavar=("H", "W"), help="default: from the test config"
    )
    parser.add_argument("--use-test-data", action="store_true", help="average FLOPs over test images")
    parser.add_argument("--num-inputs", type=int, default=10)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"analyze_model.py: error: {e}", file=sys.stderr)
        return 2
    model = instantiate(cfg.model).to(cfg.train.device).eval()
    if "parameter" in args.tasks:
        print(parameter_count_table(model, max_depth=3))
        print(f"Total parameters: {parameter_count(model)['']:,}")
    if "flop" in args.tasks:
        if args.input_size is None and not args.use_test_data:
            h, w, source = typical_input_size(cfg)
            args.input_size = [h, w]
            print(f"Input size {h}x{w}: {source}")
        wrapper = DenseForward(model)
        totals = []
        with torch.no_grad():
            for images in _inputs(cfg, model, args):
                flops = FlopCountAnalysis(wrapper, (images,))
                flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                totals.append(flops.total())
                shape = tuple(images.shape[-2:])
        print(
            f"FLOPs (backbone + head, fused multiply-adds): {sum(totals) / len(totals) / 1e9:.3f} G "
            f"per image (last input {shape[0]}x{shape[1]}, {len(totals)} input(s))"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
