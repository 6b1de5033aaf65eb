#!/usr/bin/env python
"""Train or evaluate a detector described by a LazyConfig file.

This script is a reference you can copy into your project as its own
``train_net.py``: it reads the config's ``model``, ``dataloader``
(``train``/``test``/``evaluator``), ``optimizer``, ``lr_multiplier`` and
``train`` sections, exactly like detectron2's ``tools/lazyconfig_train_net.py``.

Examples::

    # train the CPU demo
    python tools/lazyconfig_train_net.py --config-file configs/quick/retinanet_R_18_FPN_shapes.py
    # override keys on the command line
    python tools/lazyconfig_train_net.py --config-file ... train.max_iter=100 train.output_dir=out
    # evaluate a checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=out/model_final.pth
    # continue an interrupted run from its last checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --resume
    # 2 processes on one machine (GPUs, or gloo processes on CPU); torchrun also works
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2
"""

import copy
import itertools
import logging
import os
import sys
from typing import Iterable, Iterator

import torch

from d2lite.checkpoint import DetectionCheckpointer
from d2lite.config import LazyCall as L
from d2lite.config import LazyConfig, instantiate
from d2lite.data import get_detection_dataset_dicts
from d2lite.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from d2lite.evaluation import inference_context, inference_on_dataset, print_csv_format
from d2lite.modeling.ema import ModelEMA
from d2lite.solver import LRMultiplier
from d2lite.utils import comm
from d2lite.utils.events import get_event_storage, has_event_storage
from d2lite.utils.visualizer import draw_boxes, image_to_rgb

logger = logging.getLogger("d2lite")


class ConfigError(Exception):
    """A problem with the command line or config that the user must fix."""


def load_config(args):
    """Load ``args.config_file`` and apply the ``key=value`` overrides in ``args.opts``."""
    if not args.config_file:
        raise ConfigError("--config-file is required")
    try:
        cfg = LazyConfig.load(args.config_file)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
    except (FileNotFoundError, KeyError, ValueError, TypeError, SyntaxError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{type(e).__name__}: {message}") from e
    for section in ("model", "train"):
        if section not in cfg:
            raise ConfigError(
                f"{args.config_file} defines no `{section}`; a LazyConfig for this tool needs "
                "model, dataloader, optimizer, lr_multiplier and train"
            )
    device = str(cfg.train.get("device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device} but CUDA is not available on this machine; "
            "add `train.device=cpu` to the command line to run on the CPU"
        )
    return cfg


def _visualize_batches(
    data_loader: Iterable, period: int, input_format: str, class_names, num_images: int = 2
) -> Iterator:
    """Yield the loader's batches; every ``period`` iterations put a few training
    images with their ground-truth boxes into the event storage (TensorBoard)."""
    for batch in data_loader:
        if period > 0 and comm.is_main_process() and has_event_storage():
            storage = get_event_storage()
            if storage.iter % period == 0:
                for i, d in enumerate(batch[:num_images]):
                    img = image_to_rgb(d["image"], input_format)
                    if "instances" in d:
                        inst = d["instances"]
                        img = draw_boxes(img, inst.gt_boxes, inst.gt_classes, class_names=class_names)
                    storage.put_image(f"train/gt_boxes_{i}", torch.from_numpy(img.copy()).permute(2, 0, 1) / 255.0)
        yield batch


def _put_prediction_images(cfg, model, loader, num_images: int = 3) -> None:
    """Run ``model`` on the first test images of ``loader`` and put them, with predicted boxes, into the storage."""
    if not (comm.is_main_process() and has_event_storage()):
        return
    storage = get_event_storage()
    input_format = cfg.dataloader.test.mapper.get("image_format", "BGR")
    class_names = _class_names(cfg.dataloader.test)
    with inference_context(model), torch.no_grad():
        for i, batch in enumerate(itertools.islice(loader, num_images)):
            inst = model(batch)[0]["instances"].to("cpu")
            inst = inst[inst.scores > 0.3]
            d = batch[0]
            img = image_to_rgb(d["image"], input_format)
            sy, sx = img.shape[0] / d.get("height", img.shape[0]), img.shape[1] / d.get("width", img.shape[1])
            boxes = inst.pred_boxes.tensor * torch.tensor([sx, sy, sx, sy])
            img = draw_boxes(img, boxes, inst.pred_classes, inst.scores, class_names)
            storage.put_image(f"eval/pred_boxes_{i}", torch.from_numpy(img.copy()).permute(2, 0, 1) / 255.0)


def _class_names(loader_cfg):
    from d2lite.data import MetadataCatalog

    names = loader_cfg.dataset.get("names", None) if "dataset" in loader_cfg else None
    if names is None:
        return None
    name = names if isinstance(names, str) else names[0]
    return MetadataCatalog.get(name).get("thing_classes", None)


def do_test(cfg, model, ema=None):
    """Evaluate ``model`` (or its EMA weights) on ``cfg.dataloader.test``; returns the metrics dict."""
    if "evaluator" not in cfg.dataloader:
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


def build_ema(cfg, model):
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


def build_val_loss_loader(cfg):
    """The data loader of :class:`hooks.ValidationLoss`: ``cfg.dataloader.val_loss`` if the
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


def build_model(cfg):
    """``cfg.model`` on ``cfg.train.device`` (channels-last if ``cfg.train.channels_last``)."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    if cfg.train.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model


def do_train(args, cfg):
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    ema = build_ema(cfg, model)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

    train_loader = instantiate(cfg.dataloader.train)
    if "mapper" in cfg.dataloader.train:
        train_loader = _visualize_batches(
            train_loader,
            period=cfg.train.get("vis_period", 0),
            input_format=cfg.dataloader.train.mapper.get("image_format", "BGR"),
            class_names=_class_names(cfg.dataloader.train),
        )

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointables = {"trainer": trainer}
    if ema is not None:
        checkpointables["ema"] = ema
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, **checkpointables)
    eval_ema = ema if ema is not None and cfg.train.ema.get("use_for_eval", True) else None
    clip = cfg.train.get("clip_grad", None)
    val_loss = cfg.train.get("val_loss", None) or {}
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.GradientClipping(clip.clip_type, clip.clip_value, clip.get("norm_type", 2.0))
            if clip is not None and clip.enabled
            else None,
            hooks.EMAHook(ema) if ema is not None else None,
            hooks.LRScheduler(scheduler=LRMultiplier(optim, instantiate(cfg.lr_multiplier), cfg.train.max_iter)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.ValidationLoss(val_loss["period"], build_val_loss_loader(cfg), val_loss.get("num_batches", None))
            if val_loss.get("period", 0) > 0
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model, eval_ema)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # The checkpoint was saved after iteration trainer.iter finished.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)


class _LoadRecorder:
    """Checkpointable wrapper that remembers whether the checkpoint held its state."""

    def __init__(self, obj):
        self.obj, self.loaded = obj, False

    def state_dict(self):
        return self.obj.state_dict()

    def load_state_dict(self, state_dict):
        self.obj.load_state_dict(state_dict)
        self.loaded = True


def do_eval_only(cfg):
    model = build_model(cfg)
    ema = build_ema(cfg, model)
    recorder = _LoadRecorder(ema) if ema is not None else None
    checkpointer = DetectionCheckpointer(model, **({"ema": recorder} if recorder is not None else {}))
    checkpointer.load(cfg.train.init_checkpoint)
    use_ema = recorder is not None and recorder.loaded and cfg.train.ema.get("use_for_eval", True)
    if use_ema:
        logger.info(f"Evaluating the EMA weights of {cfg.train.init_checkpoint}")
    elif recorder is not None:
        logger.warning(f"train.ema.enabled but {cfg.train.init_checkpoint} holds no EMA weights: evaluating the model")
    model = create_ddp_model(model)
    return do_test(cfg, model, ema if use_ema else None)


def main(args):
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        return do_eval_only(cfg)
    do_train(args, cfg)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    try:
        # Fail fast, before spawning workers, on a config the user must fix.
        load_config(args)
    except ConfigError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
