#!/usr/bin/env python
"""Train or evaluate a detector described by a LazyConfig file.

A reference script, like detectron2's ``tools/lazyconfig_train_net.py``: the logic
lives in :mod:`d2lite.engine.lazy_train` (config loading, model/EMA/evaluation
builders, the default hook list, train and eval-only entry points). Copy this file
as your project's ``train_net.py`` only if the config cannot express what you need;
extra hooks go in the config's ``train.hooks``.

It reads the config's ``model``, ``dataloader`` (``train``/``test``/``evaluator``),
``optimizer``, ``lr_multiplier`` and ``train`` sections.

Examples::

    # train the CPU demo
    python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py
    # override keys on the command line
    python tools/lazyconfig_train_net.py --config-file ... train.max_iter=100 train.output_dir=out
    # evaluate a checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=out/model_final.pth
    # continue an interrupted run from its last checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --resume
    # 2 processes on one machine (GPUs, or gloo processes on CPU); torchrun and srun also work
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2

SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (``train.stop_signals``) stop training after the
current iteration with a checkpoint; the exit status is 128 + the signal number and the
last log line gives the command that resumes the run (README: "Resuming and preemption").
"""

import os
import sys

from d2lite.engine import default_argument_parser, default_setup, launch
from d2lite.engine.lazy_train import ConfigError, do_eval_only, do_train, load_config
from d2lite.engine.preemption import TrainingInterrupted


def main(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        return do_eval_only(cfg)
    do_train(cfg, resume=args.resume)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    try:
        # Fail fast, before spawning workers, on a config the user must fix.
        load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except TrainingInterrupted as e:
        sys.exit(e.exit_code)  # stopped by a signal after saving; the log says how to resume


if __name__ == "__main__":
    invoke_main()
