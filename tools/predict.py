#!/usr/bin/env python
"""Run a trained detector on image files or a folder and write images with boxes.

Examples::

    # after `make demo` (which writes output/retinanet_R_18_FPN_shapes/model_final.pth)
    python tools/predict.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
        --input datasets/shapes/val/000000.jpg datasets/shapes/val/000001.jpg \\
        --output predictions/ train.init_checkpoint=output/retinanet_R_18_FPN_shapes/model_final.pth

``--input`` takes files and folders (every .jpg/.jpeg/.png/.bmp inside). Each
output image (``--output``/NAME.png) shows the boxes with class name and score
above ``--confidence-threshold``, labels inside the image and apart from each other;
``predictions.json`` lists them (XYXY pixels).
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.config import instantiate
from d2lite.data import transforms as T
from d2lite.data.detection_utils import read_image
from d2lite.engine.lazy_train import ConfigError, build_model, class_names, load_config
from d2lite.utils.visualizer import draw_boxes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def list_images(inputs: List[str]) -> List[Path]:
    """Expand files and folders into a sorted list of image files; missing paths are errors."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--input {item} is neither an image file nor a folder")
    if not files:
        raise ConfigError(f"--input {' '.join(inputs)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class Predictor:
    """Model + test-time resize of a LazyConfig; ``predictor(bgr_or_rgb_image)`` -> Instances."""

    def __init__(self, cfg):
        self.model = build_model(cfg).eval()
        if not cfg.train.init_checkpoint:
            raise ConfigError("set train.init_checkpoint=PATH to the weights to run")
        DetectionCheckpointer(self.model).load(cfg.train.init_checkpoint)
        mapper = cfg.dataloader.test.mapper
        self.augmentations = T.AugmentationList([instantiate(a) for a in mapper.get("augmentations", [])])
        self.input_format = mapper.get("image_format", "BGR")

    def __call__(self, image: np.ndarray):
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, help="folder for the drawn images and predictions.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        files = list_images(args.input)
        predictor = Predictor(cfg)
    except ConfigError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2
    names = class_names(cfg.dataloader.test) if "test" in cfg.dataloader else None
    os.makedirs(args.output, exist_ok=True)
    records = []
    for path in files:
        image = read_image(str(path), format=predictor.input_format)
        instances = predictor(image)
        instances = instances[instances.scores >= args.confidence_threshold]
        rgb = image[:, :, ::-1] if predictor.input_format == "BGR" else image
        drawn = draw_boxes(rgb, instances.pred_boxes, instances.pred_classes, instances.scores, names)
        out_file = Path(args.output) / (path.stem + ".png")
        Image.fromarray(drawn).save(out_file)
        for box, score, cls in zip(
            instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
        ):
            records.append(
                {
                    "file_name": str(path),
                    "box_xyxy": [round(v, 2) for v in box],
                    "score": round(score, 4),
                    "category": names[cls] if names else cls,
                }
            )
        print(f"{path}: {len(instances)} detections -> {out_file}")
    with open(Path(args.output) / "predictions.json", "w") as f:
        json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
