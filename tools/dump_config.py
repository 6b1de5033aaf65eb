#!/usr/bin/env python
"""Print or save a LazyConfig with command-line overrides applied.

Examples::

    python tools/dump_config.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py train.max_iter=100
    python tools/dump_config.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --format yaml
    python tools/dump_config.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --format yaml --output my_config.yaml

Both formats load back with ``LazyConfig.load`` (the Python output is itself a
config file: save it as ``my_config.py``) and train with
``tools/lazyconfig_train_net.py --config-file my_config.yaml``.
"""

import argparse
import sys

from d2lite.config import LazyConfig
from d2lite.engine.lazy_train import ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=["py", "yaml"], default="py")
    parser.add_argument("--output", default="", help="file to write; default: print to stdout")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"dump_config.py: error: {e}", file=sys.stderr)
        return 2
    text = LazyConfig.to_yaml(cfg) if args.format == "yaml" else LazyConfig.to_py(cfg, prefix="")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
