#!/usr/bin/env python
"""Train or evaluate a detector described by a LazyConfig file.

A reference script, like detectron2's ``tools/lazyconfig_train_net.py``: the logic
lives in :mod:`d2lite.engine.lazy_train` (config loading, model/EMA/evaluation
builders, the default hook list, train and eval-only entry points). Copy this file
as your project's ``train_net.py`` only if the config cannot express what you need;
extra hooks go in the config's ``train.hooks``.

It reads the config's ``model``, ``dataloader`` (``train``/``test``/``evaluator``),
``optimizer``, ``lr_multiplier`` and ``train`` sections. One run at a time owns
``train.output_dir`` (see the README's "Output directory").

SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (``train.stop_signals``) stop training after the
current iteration with a checkpoint; the exit status is 128 + the signal number and the
last log line gives the command that resumes the run (README: "Resuming and preemption").
"""

import os
import sys

from d2lite.engine import default_argument_parser, default_setup, launch
from d2lite.engine.launch import slurm_env, torchrun_env
from d2lite.engine.lazy_train import (
    ConfigError,
    do_eval_only,
    do_train,
    eval_output_dir,
    load_config,
    prepare_output_dir,
)
from d2lite.engine.preemption import TrainingInterrupted

EXAMPLES = """
Examples (from the repository root, in the activated .venv):

  # train the CPU demo (into its train.output_dir, output/retinanet_R_18_FPN_shapes)
  python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py
  # override keys on the command line
  python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py \\
      train.max_iter=600 optimizer.lr=2e-3 train.output_dir=output/my_run
  # evaluate a checkpoint (results in output/retinanet_R_18_FPN_shapes/eval/model_final/)
  python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --eval-only \\
      train.init_checkpoint=output/retinanet_R_18_FPN_shapes/model_final.pth
  # continue an interrupted run from output_dir/last_checkpoint
  python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --resume
  # train again from scratch into a directory that holds a previous run (deletes its checkpoints and metrics)
  python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py --overwrite \\
      train.max_iter=600 train.output_dir=output/my_run

Several processes: add --num-gpus N (GPUs, or gloo processes on a CPU), or start
the script with torchrun; several machines: --num-machines, --machine-rank, --dist-url.
"""


def main(args):
    cfg = load_config(args.config_file, args.opts)
    if args.eval_only:
        cfg.train.output_dir = eval_output_dir(cfg.train.output_dir, cfg.train.init_checkpoint)
    default_setup(cfg, args)
    if args.eval_only:
        return do_eval_only(cfg)
    do_train(cfg, resume=args.resume)


def _exit_with(error: ConfigError) -> None:
    print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
    sys.exit(2)


def _is_main_process(args) -> bool:
    """Rank 0 of tasks started by torchrun or srun, else machine rank 0 (whose --num-gpus
    workers are spawned later, under its lock)."""
    try:
        started = torchrun_env() or slurm_env()
    except ValueError as e:  # a malformed SLURM environment
        raise ConfigError(str(e)) from e
    return started["rank"] == 0 if started else args.machine_rank == 0


def invoke_main() -> None:
    args = default_argument_parser(epilog=EXAMPLES).parse_args()
    try:
        # Fail fast, before spawning workers or writing anything, on what the user must fix.
        cfg = load_config(args.config_file, args.opts)
        output_dir = prepare_output_dir(
            cfg,
            resume=args.resume,
            eval_only=args.eval_only,
            overwrite=args.overwrite,
            main_process=_is_main_process(args),
        )
    except ConfigError as e:
        _exit_with(e)
    with output_dir:  # the run's lock on train.output_dir, released at exit
        try:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
        except ConfigError as e:  # found once the model exists (e.g. a resume that does not fit it)
            _exit_with(e)
        except TrainingInterrupted as e:
            sys.exit(e.exit_code)  # stopped by a signal after saving; the log says how to resume


if __name__ == "__main__":
    invoke_main()
