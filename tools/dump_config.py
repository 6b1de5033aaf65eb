#!/usr/bin/env python
"""Print or save a LazyConfig with command-line overrides applied.

Examples::

    python tools/dump_config.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py train.max_iter=100
    python tools/dump_config.py --config-file ... --format yaml --output my_config.yaml

The YAML loads back with ``LazyConfig.load`` (and trains with
``tools/lazyconfig_train_net.py --config-file my_config.yaml``).
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
    if args.format == "yaml":
        if not args.output:
            print("dump_config.py: error: --format yaml needs --output FILE", file=sys.stderr)
            return 2
        LazyConfig.save(cfg, args.output)
        return 0
    source = LazyConfig.to_py(cfg)
    if args.output:
        with open(args.output, "w") as f:
            f.write(source)
    else:
        print(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
