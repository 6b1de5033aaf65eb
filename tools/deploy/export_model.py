#!/usr/bin/env python
"""Export the trained detector of a LazyConfig file for deployment, and check it.

Writes ``--output``/model.pt2 (torch.export), model.ts (TorchScript) or model.onnx
(ONNX, needs ``pip install -e '.[export]'``), plus ``export.json`` (inputs, size range,
class names, test-time resize, check results). The exported model is the whole detector:

    (image (C, H, W) uint8, resized as the config's test mapper does, in the model's
     channel order; original_size (2,) int64 (height, width))
    -> boxes (N, 4) float32 XYXY in original pixels, scores (N,), classes (N,) int64

After writing, the file is loaded in a new Python process without d2lite and run on
``--check-images`` images of the config's test set; its detections must equal the
eager model's (same number, boxes within 1e-3 px, scores within 1e-4, same classes),
else the tool fails naming the first mismatch. ``--no-check`` skips that.

Examples (from the repository root, in the activated .venv, after ``make demo``)::

    python tools/deploy/export_model.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
        --format exported_program --output export/retinanet \\
        train.init_checkpoint=output/retinanet_R_18_FPN_shapes/model_final.pth
    python tools/deploy/export_model.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
        --format onnx --output export/retinanet \\
        train.init_checkpoint=output/retinanet_R_18_FPN_shapes/model_final.pth
"""

import argparse
import logging
import os
import sys

from d2lite.engine.lazy_train import ConfigError, load_config
from d2lite.export.check import ExportCheckError
from d2lite.export.formats import FORMATS, MissingExtraError, require_export_extra
from d2lite.export.lazy_export import METADATA_FILE, export_model
from d2lite.utils.logger import setup_logger

PROG = "export_model.py"


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # "prog: error: message", without the usage lines
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file (.py or .yaml)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="export format")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and export.json")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with the eager model")
    parser.add_argument("--check-images", type=int, default=4, metavar="N", help="test images to check (default 4)")
    parser.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="smallest image height/width the export takes (default: see export.json)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="largest image height/width the export takes (default 2048, or a fixed padded size)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="d2lite").setLevel(logging.WARNING)  # warnings only (e.g. no EMA weights)
    try:
        if args.check_images < 1:
            raise ConfigError(f"--check-images must be >= 1, got {args.check_images}")
        if args.format == "onnx":
            require_export_extra()
        cfg = load_config(args.config_file, args.opts)
        result = export_model(
            cfg,
            args.format,
            args.output,
            config_file=args.config_file,
            check=not args.no_check,
            num_check_images=args.check_images,
            size_range=(args.min_size, args.max_size),
        )
    except (ConfigError, MissingExtraError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except ExportCheckError as e:
        print(f"{PROG}: error: check failed: {e}", file=sys.stderr)
        return 1
    size_mb = os.path.getsize(result.path) / 2**20
    print(f"wrote {result.path} ({size_mb:.1f} MB, {result.weights} weights) in {result.seconds:.1f} s")
    if result.check is not None:
        c = result.check
        print(
            f"check passed: {c.num_images} test images, {c.num_detections} detections equal to the eager model's "
            f"(largest differences: box {c.max_box_diff:.2g} px, score {c.max_score_diff:.2g})"
        )
    print(f"inputs, size range and classes: {os.path.join(args.output, METADATA_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
