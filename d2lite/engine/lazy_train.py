"""Training and evaluation of a detector described by a LazyConfig file.

The functions behind ``tools/lazyconfig_train_net.py`` (and the other tools), so that a
project changes *how it trains* through its config instead of copying the script:

* :func:`load_config`: the config file with ``key=value`` overrides, checked
  (:class:`ConfigError` names what to fix);
* :func:`build_model`, :func:`build_ema`, :func:`build_val_loss_loader`, :func:`do_test`;
* :func:`default_hooks`: the built-in hooks plus the config's ``train.hooks``, ordered
  by priority (see :mod:`d2lite.engine.priority`);
* :func:`do_train` and :func:`do_eval_only`: the two entry points;
* :func:`prepare_output_dir`: the checks and the lock of ``train.output_dir`` before a
  run writes anything (see :mod:`d2lite.engine.output_dir`).

The config has the sections of detectron2's LazyConfig files: ``model``,
``dataloader`` (``train``, ``test``, ``evaluator``, optional ``val_loss``),
``optimizer``, ``lr_multiplier`` and ``train`` (``configs/common/train.py``).

Config-declared hooks (``train.hooks``, a list of LazyCall hooks, empty by default)::

    from d2lite.config import LazyCall as L
    from my_project.hooks import MyHook

    train.hooks = [L(MyHook)(period=10, priority="LOW")]

Each is built after the trainer, model, optimizer and checkpointer exist, then
registered with the others; inside the hook ``self.trainer`` gives the trainer,
``self.trainer.model``, ``.optimizer``, ``.data_loader``, ``.checkpointer`` and
``.cfg`` (the full config). ``priority`` (a :class:`~d2lite.engine.priority.Priority`
name or an int) is taken from the node if the hook's ``__init__`` does not accept it,
else from the hook's ``priority`` attribute (default ``"NORMAL"``: after the LR
scheduler, before the checkpointer, evaluation and the writers). A hook with
``state_dict``/``load_state_dict`` is saved in checkpoints and restored by ``--resume``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from omegaconf import DictConfig

from d2lite.checkpoint import CheckpointError, DetectionCheckpointer
from d2lite.checkpoint.compatibility import IncompatibleCheckpointError
from d2lite.checkpoint.detection_checkpoint import split_load_options
from d2lite.config import LazyCall as L
from d2lite.config import LazyConfig, instantiate
from d2lite.data import MetadataCatalog, get_detection_dataset_dicts
from d2lite.evaluation import inference_context, inference_on_dataset, print_csv_format
from d2lite.modeling.ema import ModelEMA
from d2lite.solver import LRMultiplier
from d2lite.utils import comm
from d2lite.utils.events import get_event_storage, has_event_storage
from d2lite.utils.registry import locate
from d2lite.utils.visualizer import draw_boxes, image_to_rgb

from . import hooks
from .defaults import create_ddp_model, default_writers
from .exact_resume import ExactResume
from .output_dir import (
    OutputDirError,
    OutputDirLock,
    clear_previous_run,
    eval_output_dir,
    previous_run_files,
    remove_temporary_files,
)
from .preemption import DEFAULT_STOP_SIGNALS, TrainingInterrupted, parse_signals
from .priority import hook_priority
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase
from .validation_loss import ValidationLoss

__all__ = [
    "ConfigError",
    "load_config",
    "build_model",
    "build_ema",
    "build_val_loss_loader",
    "build_train_loader",
    "class_names",
    "do_test",
    "load_eval_weights",
    "build_config_hooks",
    "instantiate_train_loader",
    "default_hooks",
    "do_train",
    "do_eval_only",
    "prepare_output_dir",
]

logger = logging.getLogger("d2lite")


class ConfigError(Exception):
    """A problem with the command line or config that the user must fix."""


def load_config(config_file: str, opts: Sequence[str] = ()) -> DictConfig:
    """Load ``config_file`` (.py or .yaml) and apply the ``key=value`` overrides ``opts``.

    Raises:
        ConfigError: the file is missing or broken, an override names no key or has the
            wrong type, the config lacks ``model``/``train``, it asks for CUDA on a
            machine without it, ``train.init_checkpoint`` has an unknown query option, or
            ``train.stop_signals`` names an unknown or uncatchable signal. The message names
            the file, key or value.
    """
    if not config_file:
        raise ConfigError("--config-file is required")
    try:
        cfg = LazyConfig.load(config_file)
        cfg = LazyConfig.apply_overrides(cfg, list(opts or []))
    except (FileNotFoundError, KeyError, ValueError, TypeError, SyntaxError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{type(e).__name__}: {message}") from e
    for section in ("model", "train"):
        if section not in cfg:
            raise ConfigError(
                f"{config_file} defines no `{section}`; a LazyConfig for this tool needs "
                "model, dataloader, optimizer, lr_multiplier and train"
            )
    device = str(cfg.train.get("device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device} but CUDA is not available on this machine; "
            "add `train.device=cpu` to the command line to run on the CPU"
        )
    try:  # query options such as "model.pth?matching_heuristics=True" (checked before any work)
        split_load_options(str(cfg.train.get("init_checkpoint", "") or ""))
    except ValueError as e:
        raise ConfigError(f"train.init_checkpoint: {e}") from e
    try:
        parse_signals(list(cfg.train.get("stop_signals", None) or []))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """``cfg.model`` on ``cfg.train.device`` (channels-last if ``cfg.train.channels_last``)."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    if cfg.train.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model


def build_ema(cfg: DictConfig, model: torch.nn.Module) -> Optional[ModelEMA]:
    """The ModelEMA of ``model`` described by ``cfg.train.ema``, or None when disabled."""
    ema_cfg = cfg.train.get("ema", None)
    if not ema_cfg or not ema_cfg.get("enabled", False):
        return None
    momentum_fn = ema_cfg.get("momentum_fn", None)
    return ModelEMA(
        model,
        momentum=ema_cfg.get("momentum", 0.0002),
        momentum_fn=instantiate(momentum_fn) if momentum_fn is not None else None,
        update_buffers=ema_cfg.get("update_buffers", False),
    )


def class_names(loader_cfg: Any) -> Optional[List[str]]:
    """``thing_classes`` of the first dataset a data-loader config reads, or None."""
    names = loader_cfg.dataset.get("names", None) if "dataset" in loader_cfg else None
    if names is None:
        return None
    name = names if isinstance(names, str) else names[0]
    return MetadataCatalog.get(name).get("thing_classes", None)


def build_val_loss_loader(cfg: DictConfig) -> Iterable:
    """The data loader of :class:`ValidationLoss`: ``cfg.dataloader.val_loss`` if the
    config defines it, else ``cfg.dataloader.test`` changed for losses: the mapper keeps
    annotations (``is_train=True``, still the test augmentations), images without boxes
    are dropped (``filter_empty=True``) and batches hold
    ``dataloader.train.total_batch_size // world_size`` images (at least 1).
    ``cfg`` is not modified."""
    if "val_loss" in cfg.dataloader:
        return instantiate(cfg.dataloader.val_loss)
    if "test" not in cfg.dataloader or "mapper" not in cfg.dataloader.test:
        raise ConfigError(
            "train.val_loss.period > 0 needs dataloader.val_loss, or a dataloader.test with a mapper to derive it from"
        )
    loader = copy.deepcopy(cfg.dataloader.test)  # keeps its parent, so ${...} interpolations still resolve
    loader.mapper.is_train = True
    dataset = loader.get("dataset", None)
    if isinstance(dataset, str):  # build_detection_test_loader would read it with filter_empty=False
        loader.dataset = L(get_detection_dataset_dicts)(names=dataset, filter_empty=True)
    elif "names" in (dataset or {}):  # L(get_detection_dataset_dicts)(names=...)
        loader.dataset.filter_empty = True
    train_batch = cfg.dataloader.get("train", {}).get("total_batch_size", 1)
    loader.batch_size = max(int(train_batch) // comm.get_world_size(), 1)
    return instantiate(loader)


def _put_prediction_images(cfg: DictConfig, model: torch.nn.Module, loader: Iterable, num_images: int = 3) -> None:
    """Run ``model`` on the first test images of ``loader`` and put them, with predicted boxes, into the storage."""
    if not (comm.is_main_process() and has_event_storage()):
        return
    storage = get_event_storage()
    input_format = cfg.dataloader.test.mapper.get("image_format", "BGR")
    names = class_names(cfg.dataloader.test)
    with inference_context(model), torch.no_grad():
        for i, batch in enumerate(itertools.islice(loader, num_images)):
            inst = model(batch)[0]["instances"].to("cpu")
            inst = inst[inst.scores > 0.3]
            d = batch[0]
            img = image_to_rgb(d["image"], input_format)
            sy, sx = img.shape[0] / d.get("height", img.shape[0]), img.shape[1] / d.get("width", img.shape[1])
            boxes = inst.pred_boxes.tensor * torch.tensor([sx, sy, sx, sy])
            img = draw_boxes(img, boxes, inst.pred_classes, inst.scores, names)
            storage.put_image(f"eval/pred_boxes_{i}", torch.from_numpy(img.copy()).permute(2, 0, 1) / 255.0)


def do_test(cfg: DictConfig, model: torch.nn.Module, ema: Optional[ModelEMA] = None) -> Dict[str, Any]:
    """Evaluate ``model`` (or its EMA weights) on ``cfg.dataloader.test`` with
    ``cfg.dataloader.evaluator``; print the results table; return the metrics dict
    ({} when the config has no evaluator, or ``dataloader.evaluator=None``). Puts a few
    test images with predicted boxes into the event storage when one is open."""
    if cfg.dataloader.get("evaluator", None) is None:
        return {}
    if "output_dir" not in cfg.dataloader.evaluator or cfg.dataloader.evaluator.output_dir is None:
        cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    if ema is not None:
        with ema.apply_to(model.module if hasattr(model, "module") else model):
            return do_test(cfg, model)
    loader = instantiate(cfg.dataloader.test)
    ret = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(ret)
    _put_prediction_images(cfg, model, loader)
    return ret


class _VisualizedBatches:
    """The batches of ``loader``; every ``period`` iterations a few training images with
    their ground-truth boxes go into the event storage (TensorBoard). ``loader`` stays
    reachable (exact resume saves its position)."""

    def __init__(
        self, loader: Iterable, period: int, input_format: str, names: Optional[List[str]], num_images: int = 2
    ) -> None:
        self.loader, self.period, self.input_format, self.names = loader, period, input_format, names
        self.num_images = num_images

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            if self.period > 0 and comm.is_main_process() and has_event_storage():
                storage = get_event_storage()
                if storage.iter % self.period == 0:
                    for i, d in enumerate(batch[: self.num_images]):
                        img = image_to_rgb(d["image"], self.input_format)
                        if "instances" in d:
                            inst = d["instances"]
                            img = draw_boxes(img, inst.gt_boxes, inst.gt_classes, class_names=self.names)
                        image = torch.from_numpy(img.copy()).permute(2, 0, 1) / 255.0
                        storage.put_image(f"train/gt_boxes_{i}", image)
            yield batch


def instantiate_train_loader(cfg: DictConfig, loader_cfg: Optional[DictConfig] = None) -> Iterable:
    """``loader_cfg`` (default ``cfg.dataloader.train``), given ``seed=train.seed`` when its
    function takes a seed and the config sets none (the seed of the default sampler and of
    the per-sample augmentation seeds, see :mod:`d2lite.data.stream`; a negative
    ``train.seed`` leaves it to the loader: one random seed shared by the ranks, saved in
    checkpoints)."""
    node = cfg.dataloader.train if loader_cfg is None else loader_cfg
    seed = cfg.train.get("seed", None)
    if seed is not None and int(seed) >= 0 and "seed" not in node and _accepts_keyword(node.get("_target_"), "seed"):
        node = copy.deepcopy(node)  # keeps its parent, so ${...} interpolations still resolve
        node.seed = int(seed)
    return instantiate(node)


def build_train_loader(cfg: DictConfig, loader_cfg: Optional[DictConfig] = None) -> Iterable:
    """:func:`instantiate_train_loader` of ``loader_cfg`` (default ``cfg.dataloader.train``),
    wrapped to put training images into TensorBoard every ``cfg.train.vis_period``
    iterations (when the loader has a mapper). A hook that replaces the training loader
    mid-run (``trainer.reset_data_loader``) passes its own loader config, e.g. another
    section of ``cfg.dataloader``; exact resume then saves the new loader's position."""
    loader_cfg = cfg.dataloader.train if loader_cfg is None else loader_cfg
    loader = instantiate_train_loader(cfg, loader_cfg)
    if "mapper" in loader_cfg:
        loader = _VisualizedBatches(
            loader,
            period=cfg.train.get("vis_period", 0),
            input_format=loader_cfg.mapper.get("image_format", "BGR"),
            names=class_names(loader_cfg),
        )
    return loader


def _accepts_keyword(target: Any, name: str) -> bool:
    try:
        params = inspect.signature(locate(target) if isinstance(target, str) else target).parameters
    except (TypeError, ValueError, ImportError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_config_hooks(cfg: DictConfig) -> List[HookBase]:
    """Instantiate the LazyCall hooks of ``cfg.train.hooks`` (see the module docstring).

    Raises:
        ConfigError: an entry is not a LazyCall, does not build a HookBase, or has a bad
            priority; the message names ``train.hooks.<i>``.
    """
    declared = cfg.train.get("hooks", None) or []
    built = []
    for i, node in enumerate(declared):
        key = f"train.hooks.{i}"
        if not (isinstance(node, (DictConfig, dict)) and "_target_" in node):
            raise ConfigError(f"{key} must be a LazyCall hook, e.g. L(MyHook)(...); got {node!r}")
        node = copy.deepcopy(node)
        priority = None
        if "priority" in node and not _accepts_keyword(node["_target_"], "priority"):
            priority = node.pop("priority")
        try:
            hook = instantiate(node)
        except Exception as e:
            raise ConfigError(f"{key}: cannot build the hook: {e}") from e
        if not isinstance(hook, HookBase):
            raise ConfigError(f"{key} built a {type(hook).__name__}, not a d2lite.engine.HookBase")
        if priority is not None:
            hook.priority = priority
        try:
            hook_priority(hook)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from e
        built.append(hook)
    return built


def default_hooks(
    cfg: DictConfig,
    trainer: TrainerBase,
    checkpointer: DetectionCheckpointer,
    ema: Optional[ModelEMA] = None,
) -> List[HookBase]:
    """The hooks of a LazyConfig training run, in execution order: the built-in ones
    that ``cfg.train`` switches on, and ``cfg.train.hooks``, stably sorted by priority.

    Built-in order (priority): IterationTimer (VERY_HIGH), GradientClipping and
    EMAHook (HIGH), LRScheduler (ABOVE_NORMAL), [config hooks, NORMAL by default],
    ExactResume and PeriodicCheckpointer (BELOW_NORMAL), ValidationLoss, EvalHook and
    LossExplosionCheck (LOW; ``train.loss_explosion``), PeriodicWriter (LOWEST). The
    checkpointer and writer exist on the main process only.
    """
    clip = cfg.train.get("clip_grad", None)
    val_loss = cfg.train.get("val_loss", None) or {}
    explosion = cfg.train.get("loss_explosion", None) or {}
    eval_ema = ema if ema is not None and cfg.train.ema.get("use_for_eval", True) else None
    model = trainer.model
    candidates = [
        hooks.IterationTimer(),
        hooks.GradientClipping(clip.clip_type, clip.clip_value, clip.get("norm_type", 2.0))
        if clip is not None and clip.enabled
        else None,
        hooks.EMAHook(ema) if ema is not None else None,
        hooks.LRScheduler(
            scheduler=LRMultiplier(trainer.optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)
        ),
        # exact-resume state, stop signals: on every rank, before the checkpointer (see engine/exact_resume.py)
        _exact_resume_hook(cfg, checkpointer),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        ValidationLoss(val_loss["period"], build_val_loss_loader(cfg), val_loss.get("num_batches", None))
        if val_loss.get("period", 0) > 0
        else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model, eval_ema)),
        hooks.LossExplosionCheck(explosion["factor"], explosion.get("window", 20))
        if explosion.get("factor", 0)
        else None,
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process()
        else None,
    ]
    all_hooks = [h for h in candidates if h is not None] + build_config_hooks(cfg)
    return sorted(all_hooks, key=hook_priority)  # stable: equal priorities keep list order


def _exact_resume_hook(cfg: DictConfig, checkpointer: DetectionCheckpointer) -> ExactResume:
    """ExactResume with ``train.seed`` and ``train.stop_signals`` (ConfigError names a bad signal)."""
    try:
        stop_signals = list(cfg.train.get("stop_signals", DEFAULT_STOP_SIGNALS) or [])
        return ExactResume(
            checkpointer,
            seed=cfg.train.get("seed", None),
            stop_signals=stop_signals,
            checkpoint_period=cfg.train.checkpointer.get("period", None),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e


def do_train(cfg: DictConfig, resume: bool = False) -> TrainerBase:
    """Train ``cfg``: build the model (and EMA), optimizer, data loader, trainer
    (AMPTrainer if ``train.amp.enabled``; metrics written by a background thread if
    ``train.async_write_metrics``), checkpointer and :func:`default_hooks`; load
    ``train.init_checkpoint``, or with ``resume`` the last checkpoint of
    ``train.output_dir`` if there is one; run to ``train.max_iter``. Returns the trainer.

    Raises:
        TrainingInterrupted: a stop signal (``train.stop_signals``) ended training after
            a checkpoint was saved; its message, logged here, says how to resume.
    """
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    ema = build_ema(cfg, model)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = build_train_loader(cfg)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optim, async_write_metrics=cfg.train.get("async_write_metrics", False)
    )
    checkpointables: Dict[str, Any] = {"trainer": trainer}
    if ema is not None:
        checkpointables["ema"] = ema
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, **checkpointables)
    trainer.checkpointer = checkpointer
    trainer.cfg = cfg
    trainer.register_hooks(default_hooks(cfg, trainer, checkpointer, ema))

    try:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    except CheckpointError as e:
        if not resume:
            raise
        if isinstance(e, IncompatibleCheckpointError):
            hint = (
                "The model or optimizer changed since the checkpoint; nothing was resumed. To train the changed "
                f"model from these weights, start a new run: train.init_checkpoint={checkpointer.get_checkpoint_file()}"
                " with a new train.output_dir"
            )
        else:
            hint = "Start a new run instead: a new train.output_dir, or --overwrite"
        raise ConfigError(f"--resume in {cfg.train.output_dir}: {e}. {hint}") from e
    # A checkpoint is saved after iteration trainer.iter finished.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except TrainingInterrupted as e:
        logger.warning(e.message)  # the last line of the log: signal, iteration, checkpoint, resume command
        raise
    return trainer


class _LoadRecorder:
    """Checkpointable wrapper that remembers whether the checkpoint held its state."""

    def __init__(self, obj: Any) -> None:
        self.obj, self.loaded = obj, False

    def state_dict(self) -> Dict[str, Any]:
        return self.obj.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.obj.load_state_dict(state_dict)
        self.loaded = True


def load_eval_weights(cfg: DictConfig, model: torch.nn.Module, action: str = "evaluating") -> Optional[torch.nn.Module]:
    """Load ``train.init_checkpoint`` into ``model`` and, with ``train.ema.enabled``, into
    a new EMA of it.

    Returns:
        The EMA when the checkpoint held EMA weights and ``train.ema.use_for_eval`` (default
        True): its weights are the ones to use. Else None (a warning says so when an EMA was
        asked for; ``action`` names what is done with the model's weights instead).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    ema = build_ema(cfg, model)
    recorder = _LoadRecorder(ema) if ema is not None else None
    checkpointer = DetectionCheckpointer(model, **({"ema": recorder} if recorder is not None else {}))
    checkpointer.load(cfg.train.init_checkpoint)
    if recorder is not None and recorder.loaded and cfg.train.ema.get("use_for_eval", True):
        return ema
    if recorder is not None:
        logger.warning(f"train.ema.enabled but {cfg.train.init_checkpoint} holds no EMA weights: {action} the model")
    return None


def do_eval_only(cfg: DictConfig) -> Dict[str, Any]:
    """Evaluate the weights of ``train.init_checkpoint`` (its EMA weights when it has
    them and ``train.ema.enabled``); returns the metrics dict."""
    model = build_model(cfg)
    ema = load_eval_weights(cfg, model)
    if ema is not None:
        logger.info(f"Evaluating the EMA weights of {cfg.train.init_checkpoint}")
    model = create_ddp_model(model)
    return do_test(cfg, model, ema)


# ---------------------------------------------------------------- the output directory


def _is_local(path: str) -> bool:
    return "://" not in path


def prepare_output_dir(
    cfg: DictConfig,
    *,
    resume: bool = False,
    eval_only: bool = False,
    overwrite: bool = False,
    main_process: bool = True,
) -> contextlib.AbstractContextManager:
    """Check and claim ``cfg.train.output_dir`` before a run writes anything into it.

    * ``eval_only``: ``train.init_checkpoint`` must be set (and exist, for a local path);
      if ``train.output_dir`` holds a training run, ``cfg.train.output_dir`` becomes
      ``{train.output_dir}/eval/{checkpoint name}``
      (:func:`~d2lite.engine.output_dir.eval_output_dir`), so the training run's records
      stay untouched; an earlier evaluation in the directory is replaced.
    * The directory must be creatable and writable.
    * On the main process (``main_process``): the directory is locked
      (:class:`~d2lite.engine.output_dir.OutputDirLock`, reported if stale); a fresh
      training run (no ``resume``, or ``resume`` with no checkpoint to resume from) into
      a directory holding a previous run's checkpoints or metrics is refused unless
      ``overwrite``, which deletes them first; a local ``train.init_checkpoint`` that
      will be loaded must exist; temporary files of interrupted saves are removed.

    Returns:
        The held lock (a context manager that releases it), or a null context on other
        processes.

    Raises:
        ConfigError: one line naming the setting to fix (``train.output_dir``,
            ``train.init_checkpoint``, ``--resume``/``--overwrite``).
    """
    init = str(cfg.train.get("init_checkpoint", "") or "")
    init = split_load_options(init)[0] if init else ""  # "model.pth?matching_heuristics=True"
    if eval_only:
        if not init:
            raise ConfigError("--eval-only evaluates train.init_checkpoint: add train.init_checkpoint=PATH")
        if _is_local(init) and not os.path.isfile(init):
            raise ConfigError(f"train.init_checkpoint={init} does not exist")
        cfg.train.output_dir = eval_output_dir(cfg.train.output_dir, init)
    output_dir = str(cfg.train.get("output_dir", "") or "")
    if not output_dir:
        return contextlib.nullcontext()
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"train.output_dir={output_dir} is a file, not a directory")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"train.output_dir={output_dir} cannot be created: {e.strerror or e}") from e
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir={output_dir} is not writable")
    if not main_process:
        return contextlib.nullcontext()

    lock = OutputDirLock(output_dir)
    try:
        lock.acquire()
    except OutputDirError as e:
        raise ConfigError(str(e)) from None
    try:
        removed = remove_temporary_files(output_dir)
        if removed:
            logger.warning(f"Removed temporary files of an interrupted save from {output_dir}: {', '.join(removed)}")
        files = previous_run_files(output_dir)
        resumable = any(f.endswith(".pth") or f == "last_checkpoint" for f in files)
        if eval_only:
            if os.listdir(output_dir) != [os.path.basename(lock.path)]:
                logger.warning(f"Replacing the previous evaluation in {output_dir}")
                clear_previous_run(output_dir)
        elif files and not (resume and resumable):
            if not overwrite:
                shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
                reason = "holds no checkpoint to resume from but" if resume else "already"
                raise ConfigError(
                    f"train.output_dir={output_dir} {reason} holds a previous run ({shown}). Add --resume to "
                    "continue it, set train.output_dir to a new directory, or add --overwrite to delete the "
                    "previous run's checkpoints, metrics and logs first"
                )
            removed = clear_previous_run(output_dir)
            logger.warning(f"--overwrite: deleted the previous run in {output_dir}: {', '.join(removed)}")
        if init and _is_local(init) and not eval_only and not (resume and resumable) and not os.path.isfile(init):
            raise ConfigError(f"train.init_checkpoint={init} does not exist")
    except BaseException:
        lock.release()
        raise
    return lock
