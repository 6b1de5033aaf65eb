#!/usr/bin/env python
"""Write dataset images with their ground-truth boxes, as the model sees them.

Examples::

    # training images after the mapper (augmentations applied)
    python tools/visualize_data.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --output-dir vis/ --num-images 16
    # raw annotations from the dataset files
    python tools/visualize_data.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
        --source annotation --output-dir vis_raw/ --num-images 16
    # another training loader of the config, e.g. RTMDet's stage-2 pipeline
    python tools/visualize_data.py --config-file projects/RTMDet/configs/rtmdet_tiny_shapes_recipe.py \\
        --loader train_stage2 --output-dir vis2/ --num-images 16
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from d2lite.config import instantiate
from d2lite.data.detection_utils import read_image
from d2lite.engine.lazy_train import ConfigError, class_names, load_config
from d2lite.structures import BoxMode
from d2lite.utils.visualizer import draw_boxes, image_to_rgb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", choices=["dataloader", "annotation"], default="dataloader")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument(
        "--loader",
        default="train",
        metavar="NAME",
        help="the training loader to show: cfg.dataloader.NAME (default: train; e.g. train_stage2)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"visualize_data.py: error: {e}", file=sys.stderr)
        return 2
    if args.loader not in cfg.dataloader:
        print(
            f"visualize_data.py: error: the config has no dataloader.{args.loader}; it has {sorted(cfg.dataloader)}",
            file=sys.stderr,
        )
        return 2
    loader_cfg = cfg.dataloader[args.loader]
    os.makedirs(args.output_dir, exist_ok=True)
    names = class_names(loader_cfg)
    written = 0
    if args.source == "dataloader":
        loader_cfg.num_workers = 0
        input_format = loader_cfg.mapper.get("image_format", "BGR")
        for batch in instantiate(loader_cfg):
            for d in batch:
                inst = d["instances"]
                img = draw_boxes(
                    image_to_rgb(d["image"], input_format), inst.gt_boxes, inst.gt_classes, class_names=names
                )
                name = f"{written:04d}_{os.path.splitext(os.path.basename(d['file_name']))[0]}.png"
                Image.fromarray(img).save(os.path.join(args.output_dir, name))
                written += 1
                if written >= args.num_images:
                    break
            if written >= args.num_images:
                break
    else:
        for d in instantiate(loader_cfg.dataset)[: args.num_images]:
            img = read_image(d["file_name"], format="RGB")
            annos = d.get("annotations", [])
            boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos])
            img = draw_boxes(img, boxes.reshape(-1, 4), [a["category_id"] for a in annos], class_names=names)
            Image.fromarray(img).save(os.path.join(args.output_dir, os.path.basename(d["file_name"])[:-4] + ".png"))
            written += 1
    print(f"Wrote {written} images to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
