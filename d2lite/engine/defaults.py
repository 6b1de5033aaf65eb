"""Defaults shared by training scripts (same names and semantics as
``detectron2.engine.defaults``): command-line parser, run setup (output directory,
logging, saved config, manifest, seeding), default metric writers and the DDP wrapper.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import subprocess
import sys
import warnings
from typing import Any, Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from d2lite.utils import comm
from d2lite.utils.collect_env import collect_env_dict, collect_env_info
from d2lite.utils.env import seed_all_rng
from d2lite.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from d2lite.utils.logger import setup_logger

__all__ = [
    "config_changes",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
]

DEFAULT_SEED = 0


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> torch.nn.Module:
    """
    Create a DistributedDataParallel model if there are >1 processes.

    Args:
        model: a torch.nn.Module (already on its device).
        fp16_compression: add fp16 compression hooks to the ddp object.
            See more at https://pytorch.org/docs/stable/ddp_comm_hooks.html#torch.distributed.algorithms.ddp_comm_hooks.default_hooks.fp16_compress_hook
        kwargs: other arguments of :class:`torch.nn.parallel.DistributedDataParallel`
            (e.g. ``broadcast_buffers``, ``find_unused_parameters``).

    Returns:
        ``model`` itself when the world size is 1, else the DDP wrapper. For a model on
        CUDA ``device_ids`` defaults to the current device (``launch`` sets it to the local
        rank's); on CPU it is left unset.
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = any(p.is_cuda for p in model.parameters())
        if on_cuda:  # the device launch() selected: the local rank's, or the task's own GPU under srun
            kwargs["device_ids"] = [torch.cuda.current_device()]
    if (
        "broadcast_buffers" in kwargs
        and "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    ):
        # torch >= 2.14 deprecates broadcast_buffers (a FutureWarning on every run). Its successor also
        # syncs the buffers once when wrapping, which changes nothing here: all ranks build the same model.
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """
    Create a parser with some common arguments used by d2lite users.

    Args:
        epilog: epilog passed to ArgumentParser describing the usage.

    Returns:
        argparse.ArgumentParser: with --config-file, --resume, --eval-only, --overwrite, --num-gpus,
        --num-machines, --machine-rank, --dist-url and trailing ``opts``
        (``path.key=value`` overrides).
    """
    parser = argparse.ArgumentParser(
        epilog=epilog
        or f"""
Examples:

Run on single machine:
    $ {sys.argv[0]} --num-gpus 8 --config-file cfg.py

Change some config options:
    $ {sys.argv[0]} --config-file cfg.py train.max_iter=100 model.num_classes=3

Run on multiple machines:
    (machine0)$ {sys.argv[0]} --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]
    (machine1)$ {sys.argv[0]} --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Whether to attempt to resume from the checkpoint directory "
        "(the last checkpoint in train.output_dir, else train.init_checkpoint).",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="perform evaluation only, of train.init_checkpoint (into train.output_dir/eval/<checkpoint name> "
        "when train.output_dir holds a training run)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in a train.output_dir that holds a previous run: its checkpoints, "
        "metrics, events, logs, config and manifest are deleted first",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine* (processes on CPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")

    # PyTorch still may leave orphan processes in multi-gpu training.
    # Therefore we use a deterministic way to obtain port,
    # so that users are aware of orphan processes by seeing the port occupied.
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    parser.add_argument(
        "--dist-url",
        default=f"tcp://127.0.0.1:{port}",
        help="initialization URL for pytorch distributed backend ('auto' picks a free "
        "port). See https://pytorch.org/docs/stable/distributed.html for details.",
    )
    parser.add_argument(
        "opts",
        help='Modify config options at the end of the command, using "path.key=value" (e.g. train.max_iter=100).',
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


_MISSING = object()


def _try_get_key(cfg: Any, *keys: str, default: Any = None) -> Any:
    """Value of the first dotted key present in ``cfg`` (DictConfig, dict or object)."""
    for k in keys:
        node = cfg
        for part in k.split("."):
            if node is None:
                node = _MISSING
                break
            try:
                node = node[part]
            except (KeyError, TypeError, IndexError, AttributeError):
                # omegaconf's ConfigKeyError/ConfigAttributeError subclass these
                node = getattr(node, part, _MISSING)
            if node is _MISSING:
                break
        if node is not _MISSING:
            return node
    return default


def _git_info(repo_dir: str) -> Dict[str, Optional[str]]:
    def _git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=repo_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=True,
                text=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _write_manifest(
    path: str,
    *,
    args: Any,
    seed: int,
    cfg_seed: int,
    world_size: int,
    resume: bool = False,
    config_changes: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write the run manifest. A fresh start writes a new one; a resume keeps the
    run's manifest and appends its own entry to ``history`` (one entry per start)."""
    import d2lite

    repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(d2lite.__file__)))
    start = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": [sys.executable] + sys.argv,
        "args": vars(args) if isinstance(args, argparse.Namespace) else str(args),
        "git": _git_info(repo_dir),
        "seed": seed,
        "train.seed": cfg_seed,
        "world_size": world_size,
        "hostname": os.uname().nodename if hasattr(os, "uname") else None,
    }
    manifest = None
    if resume and os.path.isfile(path):
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None  # unreadable: start a new one
    if isinstance(manifest, dict):
        history = manifest.setdefault("history", [])
        history.append({**start, "resume": True, "config_changes": config_changes or {}})
    else:
        manifest = {**start, "environment": collect_env_dict()}
        manifest["history"] = [{**start, "resume": resume, "config_changes": config_changes or {}}]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return manifest


def _diff(old: Any, new: Any, prefix: str, out: Dict[str, List[Any]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            _diff(old.get(k, _MISSING), new.get(k, _MISSING), f"{prefix}{k}.", out)
    elif old != new:
        out[prefix[:-1]] = [None if old is _MISSING else old, None if new is _MISSING else new]


def config_changes(saved_yaml: str, cfg: Any) -> Dict[str, List[Any]]:
    """Keys whose value in ``cfg`` differs from the config saved at ``saved_yaml``:
    ``{"train.max_iter": [saved value, new value], ...}``, at the deepest key where
    they differ (a key only in one of them has None on the other side). Values are
    compared as their YAML (plain data)."""
    import yaml

    from d2lite.config import LazyConfig
    from d2lite.config.serialization import YAMLLoader

    with open(saved_yaml, encoding="utf-8") as f:
        old = yaml.load(f, Loader=YAMLLoader) or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unserializable values were reported when the run started
        new = yaml.load(LazyConfig.to_yaml(cfg), Loader=YAMLLoader) or {}
    changes: Dict[str, List[Any]] = {}
    _diff(old, new, "", changes)
    return changes


def default_setup(cfg: Any, args: Any) -> None:
    """
    Perform some basic common setups at the beginning of a job, including:

    1. Create the output directory ``cfg.train.output_dir`` (main process).
    2. Set up the d2lite and fvcore loggers: console on rank 0, ``log.txt`` (rank 0)
       and ``log.txt.rank{r}`` files in the output directory.
    3. Log basic information about environment, cmdline arguments, and config.
    4. Save the full config to ``output_dir/config.yaml`` (``LazyConfig.save``) and a run
       manifest to ``output_dir/manifest.json`` (time, command line, args, git commit
       and dirty flag, seed, world size, package versions) — main process only. With
       ``args.resume`` an existing ``config.yaml`` is kept (it is the run's config) and
       the keys the new config changes are logged; the manifest keeps the first start's
       fields and gets one ``history`` entry per start (command line, time, git,
       ``resume``, ``config_changes``: ``{key: [saved, new]}``).
    5. Seed all RNGs with ``cfg.train.seed + rank`` (default seed 0; a negative seed
       draws a random one, which is then logged and written to the manifest).

    Args:
        cfg: the full LazyConfig (omegaconf DictConfig) with a ``train`` section.
        args: the command line arguments (``default_argument_parser().parse_args()``).
    """
    output_dir = _try_get_key(cfg, "train.output_dir", "OUTPUT_DIR", "output_dir")
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)

    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    logger = setup_logger(output_dir, distributed_rank=rank)

    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())

    logger.info("Command line arguments: " + str(args))
    if hasattr(args, "config_file") and args.config_file != "":
        with open(args.config_file) as f:
            logger.info(f"Contents of args.config_file={args.config_file}:\n{f.read()}")

    # make sure each worker has a different, yet deterministic seed if specified
    seed = _try_get_key(cfg, "train.seed", "SEED", default=DEFAULT_SEED)
    seed = DEFAULT_SEED if seed is None else int(seed)
    used_seed = seed_all_rng(None if seed < 0 else seed + rank)
    logger.info(f"Seeded all RNGs with {used_seed} (train.seed={seed}, rank={rank}).")

    if comm.is_main_process() and output_dir:
        from d2lite.config import LazyConfig

        resume = bool(getattr(args, "resume", False)) and not getattr(args, "eval_only", False)
        path = os.path.join(output_dir, "config.yaml")
        changes = None
        if resume and os.path.isfile(path):
            # config.yaml stays the run's training config; the resume's changes go to the manifest.
            changes = config_changes(path, cfg)
            if changes:
                listed = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
                logger.warning(
                    f"Resuming with a config that differs from {path} (kept as the run's config; "
                    f"the changes are recorded in manifest.json):\n{listed}"
                )
        else:
            LazyConfig.save(cfg, path)
            logger.info(f"Full config saved to {path}")
        manifest_path = os.path.join(output_dir, "manifest.json")
        _write_manifest(
            manifest_path,
            args=args,
            seed=used_seed,
            cfg_seed=seed,
            world_size=comm.get_world_size(),
            resume=resume,
            config_changes=changes,
        )
        logger.info(f"Run manifest {'updated' if resume else 'saved'}: {manifest_path}")

    # cudnn benchmark has large overhead. It shouldn't be used considering the small size of
    # typical validation set.
    if not (hasattr(args, "eval_only") and args.eval_only):
        torch.backends.cudnn.benchmark = bool(
            _try_get_key(cfg, "train.cudnn_benchmark", "CUDNN_BENCHMARK", default=False)
        )


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """
    Build a list of :class:`EventWriter` to be used. It now consists of a
    :class:`CommonMetricPrinter`, :class:`TensorboardXWriter` and :class:`JSONWriter`.

    Args:
        output_dir: directory to store JSON metrics (``metrics.json``) and tensorboard events.
        max_iter: the total number of iterations (for the ETA).

    Returns:
        list[EventWriter]: a list of :class:`EventWriter` objects.
    """
    os.makedirs(output_dir, exist_ok=True)
    return [
        # It may not always print what you want to see, since it prints "common" metrics only.
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
