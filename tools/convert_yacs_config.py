#!/usr/bin/env python
"""Convert a detectron2 YAML config (e.g. configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml)
into a LazyConfig .py file that tools/lazyconfig_train_net.py trains.

The YAML is read as ``get_cfg().merge_from_file(X.yaml)`` reads it (``_BASE_`` files
followed, ``!!python/object/apply:eval`` values evaluated without running code), then
``KEY VALUE`` pairs are merged as ``cfg.merge_from_list``. The written file loads
d2lite's configs/common files and sets the values in which the YAML differs; it builds
the same model, optimizer and lr schedule as ``build_model(cfg)``,
``build_optimizer(cfg, model)`` and ``build_lr_scheduler(cfg, optimizer)``.

Examples (detectron2's own retinanet_R_50_FPN_1x.yaml ships in tests/config/detectron2_configs)::

    python tools/convert_yacs_config.py tests/config/detectron2_configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml \\
        -o my_config.py
    python tools/convert_yacs_config.py tests/config/detectron2_configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml \\
        -o my_config.py --force MODEL.RETINANET.NUM_CLASSES 3

Then train the file like any LazyConfig (on COCO, here):
``python tools/lazyconfig_train_net.py --config-file my_config.py``.
"""

import argparse
import logging
import os
import sys

from d2lite.config.yacs_to_lazy import ConversionError, convert_yacs_config
from d2lite.utils.logger import setup_logger


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_file", metavar="X.yaml", help="detectron2 YAML config file")
    parser.add_argument("-o", "--output", default="", help="the .py file to write; default: X.py next to X.yaml")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="pairs merged after the file")
    args = parser.parse_intermixed_args(argv)
    setup_logger(name="d2lite").setLevel(logging.WARNING)  # show the conversion notes and scope warnings

    output = args.output or os.path.splitext(args.config_file)[0] + ".py"
    if os.path.exists(output) and not args.force:
        print(f"convert_yacs_config.py: error: {output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        source = convert_yacs_config(args.config_file, args.opts)
    except (ConversionError, KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"convert_yacs_config.py: error: {message}", file=sys.stderr)
        return 2
    with open(output, "w", encoding="utf-8") as f:
        f.write(source)
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
