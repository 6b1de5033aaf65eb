#!/usr/bin/env python
"""Parameter count and FLOPs of a LazyConfig's model (through fvcore).

Examples::

    python tools/analyze_model.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --tasks parameter
    python tools/analyze_model.py --config-file configs/COCO-Detection/retinanet_R_50_FPN_1x.py \\
        --tasks flop --input-size 800 1216 train.device=cpu

FLOPs count the backbone and head (post-processing excluded), one image of
``--input-size`` (H W, padded to the backbone's size divisibility), or of the
first ``--num-inputs`` test images when ``--use-test-data`` is given.
fvcore counts one fused multiply-add as one flop.
"""

import argparse
import logging
import sys

import torch
from fvcore.nn import FlopCountAnalysis, parameter_count, parameter_count_table
from torch import nn

from d2lite.config import instantiate
from d2lite.engine.lazy_train import ConfigError, load_config

logger = logging.getLogger("d2lite.analyze_model")


class DenseForward(nn.Module):
    """backbone + head of a DenseDetector on an already normalised (N, C, H, W) batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        features = self.model.backbone(images)
        return self.model.head([features[f] for f in self.model.head_in_features])


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
    parser.add_argument("--input-size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
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
