"""Convert an mmdetection 3.x RTMDet checkpoint into a d2lite checkpoint.

    python projects/RTMDet/convert_mmdet_checkpoint.py rtmdet_tiny_8xb32-300e_coco.pth \\
        rtmdet_tiny_d2lite.pth [--which state_dict|ema_state_dict]

The output is ``{"model": state_dict, "__author__": "mmdetection"}``, which
``DetectionCheckpointer`` (and so ``train.init_checkpoint=...``) loads. ``state_dict``
(the default) holds the EMA weights in checkpoints written by mmengine's EMAHook and in
released models; see ``rtmdet/converter.py``.
"""

import argparse
import logging
import os
from typing import List, Optional

import torch

from rtmdet.converter import load_mmdet_checkpoint

logger = logging.getLogger(__name__)


def main(argv: Optional[List[str]] = None) -> str:
    """Run the conversion; returns the output path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="mmdetection checkpoint (.pth)")
    parser.add_argument("output", help="d2lite checkpoint to write (.pth)")
    parser.add_argument("--which", default="state_dict", choices=["state_dict", "ema_state_dict"])
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"convert_mmdet_checkpoint: input {args.input} does not exist.")
    state_dict = load_mmdet_checkpoint(args.input, which=args.which)
    torch.save({"model": state_dict, "__author__": "mmdetection"}, args.output)
    logger.info("Wrote %d tensors to %s", len(state_dict), args.output)
    return args.output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
