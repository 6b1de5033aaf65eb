"""Convert a detectron2 YAML (yacs) config into an equivalent LazyConfig.

:func:`yacs_to_lazy` maps a config from :func:`d2lite.config.get_cfg` (after
``merge_from_file``) to the LazyConfig sections the training tool reads (``model``,
``dataloader``, ``optimizer``, ``lr_multiplier``, ``train``), calling the same classes
with the same arguments as the components' ``from_config`` methods and
``build_optimizer``/``build_lr_scheduler`` do. :func:`convert_yacs_config` writes them as
a Python file that starts from d2lite's ``configs/common`` files (loaded with
:func:`d2lite.model_zoo.get_config`) and overrides only the values that differ::

    text = convert_yacs_config("configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    # ... model = get_config("common/models/retinanet.py").model
    #     model.backbone.bottom_up.freeze_at = 2
    #     optimizer.lr = 0.01 ...

``tools/convert_yacs_config.py`` is the command-line front end.
"""

import dataclasses
import inspect
import logging
from collections import abc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    StepWithFixedGammaParamScheduler,
)
from omegaconf import DictConfig, OmegaConf, SCMode

from .config import CfgNode, get_cfg
from .lazy import LazyCall as L
from .serialization import to_py

__all__ = ["ConversionError", "yacs_to_lazy", "convert_yacs_config", "lazy_config_source"]

logger = logging.getLogger(__name__)


class ConversionError(ValueError):
    """A YAML config setting that has no LazyConfig equivalent in d2lite (names the key)."""


# The configs/common files a converted config starts from: section -> (file, attribute).
_COMMON = {
    "dataloader": ("common/data/coco.py", "dataloader"),
    "model": ("common/models/retinanet.py", "model"),
    "optimizer": ("common/optim.py", "SGD"),
    "train": ("common/train.py", "train"),
}
_BACKBONES = ("build_resnet_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")


# ----------------------------------------------------------------------------------------------
# YAML config -> LazyConfig sections
# ----------------------------------------------------------------------------------------------


def _resnet(cfg: CfgNode) -> DictConfig:
    """``L(ResNet)`` building what :func:`build_resnet_backbone` builds."""
    from d2lite.modeling.backbone import BasicBlock, BasicStem, BottleneckBlock, ResNet

    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    default_layout = (
        r.STEM_OUT_CHANNELS == 64
        and r.RES2_OUT_CHANNELS == (64 if depth < 50 else 256)
        and r.RES5_DILATION == 1
        and (depth < 50 or (r.NUM_GROUPS == 1 and r.WIDTH_PER_GROUP == 64))
    )
    if default_layout:  # ResNet.make_default_stages builds exactly detectron2's stages
        kwargs: Dict[str, Any] = {"depth": depth}
        if depth >= 50:
            kwargs["stride_in_1x1"] = r.STRIDE_IN_1X1
        stages: Any = L(ResNet.make_default_stages)(**kwargs, norm=r.NORM)
    else:  # one make_stage per stage, with build_resnet_backbone's arguments
        num_blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
        stages = []
        in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
        bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
        for idx, stage_idx in enumerate(range(2, 6)):
            dilation = r.RES5_DILATION if stage_idx == 5 else 1
            first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
            n = num_blocks[depth][idx]
            kwargs = {
                "num_blocks": n,
                "stride_per_block": [first_stride] + [1] * (n - 1),
                "in_channels": in_channels,
                "out_channels": out_channels,
                "norm": r.NORM,
            }
            if depth < 50:
                kwargs["block_class"] = BasicBlock
            else:
                kwargs.update(
                    block_class=BottleneckBlock,
                    bottleneck_channels=bottleneck_channels,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                    dilation=dilation,
                    num_groups=r.NUM_GROUPS,
                )
            stages.append(L(ResNet.make_stage)(**kwargs))
            in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=len(cfg.MODEL.PIXEL_MEAN), out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM),
        stages=stages,
        out_features=list(r.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def _backbone(cfg: CfgNode) -> Tuple[DictConfig, Dict[str, Any]]:
    """``L(...)`` of ``MODEL.BACKBONE.NAME``'s backbone and its output shapes."""
    from d2lite.modeling.backbone import FPN, LastLevelMaxPool, LastLevelP6P7, build_backbone

    name = cfg.MODEL.BACKBONE.NAME
    if name not in _BACKBONES:
        raise ConversionError(
            f"MODEL.BACKBONE.NAME={name!r}: the converter knows the LazyConfig form of {', '.join(_BACKBONES)}; "
            "write the backbone of the converted file by hand (L(YourBackbone)(...))"
        )
    # Built on the meta device (no memory, no init cost): checks the settings with
    # build_backbone's own errors and gives the exact output shapes.
    with torch.device("meta"):
        built = build_backbone(cfg)
    resnet = _resnet(cfg)
    if name == "build_resnet_backbone":
        return resnet, built.output_shape()
    f = cfg.MODEL.FPN
    if name == "build_resnet_fpn_backbone":
        top_block: DictConfig = L(LastLevelMaxPool)()
    else:
        top_block = L(LastLevelP6P7)(
            in_channels=built.bottom_up.output_shape()["res5"].channels, out_channels=f.OUT_CHANNELS
        )
    fpn = L(FPN)(
        bottom_up=resnet,
        in_features=list(f.IN_FEATURES),
        out_channels=f.OUT_CHANNELS,
        norm=f.NORM,
        top_block=top_block,
        fuse_type=f.FUSE_TYPE,
    )
    return fpn, built.output_shape()


def _shared(per_level: Sequence) -> Any:
    """``[[a, b]]`` (one list for all levels) -> ``[a, b]``, the spelling of configs/common."""
    per_level = [list(x) if isinstance(x, (list, tuple)) else x for x in per_level]
    if len(per_level) == 1 and isinstance(per_level[0], list):
        return per_level[0]
    return per_level


def _model(cfg: CfgNode) -> DictConfig:
    """``L(RetinaNet)`` building what ``build_model(cfg)`` builds."""
    from d2lite.layers import ShapeSpec
    from d2lite.modeling import Box2BoxTransform, DefaultAnchorGenerator, Matcher, RetinaNet, RetinaNetHead

    m = cfg.MODEL
    if m.META_ARCHITECTURE != "RetinaNet":
        raise ConversionError(
            f"MODEL.META_ARCHITECTURE={m.META_ARCHITECTURE!r}: d2lite builds RetinaNet only (box detection); "
            "the converter cannot write this model"
        )
    if m.ANCHOR_GENERATOR.NAME != "DefaultAnchorGenerator":
        raise ConversionError(
            f"MODEL.ANCHOR_GENERATOR.NAME={m.ANCHOR_GENERATOR.NAME!r}: only DefaultAnchorGenerator can be converted"
        )
    backbone, shapes = _backbone(cfg)
    r = m.RETINANET
    missing = [f for f in r.IN_FEATURES if f not in shapes]
    if missing:
        raise ConversionError(
            f"MODEL.RETINANET.IN_FEATURES has {missing}, which the backbone does not produce (it outputs {list(shapes)})"
        )
    feature_shapes = [shapes[f] for f in r.IN_FEATURES]
    num_anchors = DefaultAnchorGenerator(cfg, feature_shapes).num_cell_anchors
    if len(set(num_anchors)) != 1:
        raise ConversionError(
            f"MODEL.ANCHOR_GENERATOR gives {num_anchors} anchors per level; RetinaNet needs one number"
        )
    channels = feature_shapes[0].channels
    return L(RetinaNet)(
        backbone=backbone,
        head=L(RetinaNetHead)(
            input_shape=[ShapeSpec(channels=channels)] * len(feature_shapes),
            num_classes=r.NUM_CLASSES,
            conv_dims=[channels] * r.NUM_CONVS,
            prior_prob=r.PRIOR_PROB,
            norm=r.NORM,
            num_anchors=num_anchors[0],
        ),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=_shared(m.ANCHOR_GENERATOR.SIZES),
            aspect_ratios=_shared(m.ANCHOR_GENERATOR.ASPECT_RATIOS),
            strides=[s.stride for s in feature_shapes],
            offset=m.ANCHOR_GENERATOR.OFFSET,
        ),
        box2box_transform=L(Box2BoxTransform)(weights=list(r.BBOX_REG_WEIGHTS)),
        anchor_matcher=L(Matcher)(
            thresholds=list(r.IOU_THRESHOLDS), labels=list(r.IOU_LABELS), allow_low_quality_matches=True
        ),
        num_classes=r.NUM_CLASSES,
        head_in_features=list(r.IN_FEATURES),
        focal_loss_alpha=r.FOCAL_LOSS_ALPHA,
        focal_loss_gamma=r.FOCAL_LOSS_GAMMA,
        smooth_l1_beta=r.SMOOTH_L1_LOSS_BETA,
        box_reg_loss_type=r.BBOX_REG_LOSS_TYPE,
        test_score_thresh=r.SCORE_THRESH_TEST,
        test_topk_candidates=r.TOPK_CANDIDATES_TEST,
        test_nms_thresh=r.NMS_THRESH_TEST,
        max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        pixel_mean=list(m.PIXEL_MEAN),
        pixel_std=list(m.PIXEL_STD),
        vis_period=cfg.VIS_PERIOD,
        input_format=cfg.INPUT.FORMAT,
    )


def _dataset_names(names: Sequence[str], key: str) -> Any:
    names = list(names)
    if not names:
        raise ConversionError(f"{key} is empty: name the registered dataset(s) to use")
    return names[0] if len(names) == 1 else names


def _dataloader(cfg: CfgNode, notes: List[str]) -> DictConfig:
    """``dataloader.{train,test,evaluator}`` as ``build_detection_{train,test}_loader(cfg, ...)`` build them."""
    from d2lite.data import (
        DatasetMapper,
        build_detection_test_loader,
        build_detection_train_loader,
        get_detection_dataset_dicts,
    )
    from d2lite.data import transforms as T
    from d2lite.data.samplers import RepeatFactorTrainingSampler
    from d2lite.evaluation import COCOEvaluator

    inp, dl = cfg.INPUT, cfg.DATALOADER
    augmentations = [
        L(T.ResizeShortestEdge)(
            short_edge_length=tuple(inp.MIN_SIZE_TRAIN),
            max_size=inp.MAX_SIZE_TRAIN,
            sample_style=inp.MIN_SIZE_TRAIN_SAMPLING,
        )
    ]
    if inp.RANDOM_FLIP not in ("horizontal", "vertical", "none"):
        raise ConversionError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {inp.RANDOM_FLIP!r}")
    if inp.RANDOM_FLIP == "horizontal":
        augmentations.append(L(T.RandomFlip)(horizontal=True))
    elif inp.RANDOM_FLIP == "vertical":
        augmentations.append(L(T.RandomFlip)(horizontal=False, vertical=True))
    if inp.CROP.ENABLED:
        augmentations.insert(0, L(T.RandomCrop)(crop_type=inp.CROP.TYPE, crop_size=tuple(inp.CROP.SIZE)))

    dataloader = OmegaConf.create(flags={"allow_objects": True})
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(
            names=_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN"), filter_empty=dl.FILTER_EMPTY_ANNOTATIONS
        ),
        mapper=L(DatasetMapper)(is_train=True, augmentations=augmentations, image_format=inp.FORMAT),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=dl.ASPECT_RATIO_GROUPING,
        num_workers=dl.NUM_WORKERS,
    )
    if dl.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
            repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
                dataset_dicts="${dataloader.train.dataset}", repeat_thresh=dl.REPEAT_THRESHOLD, sqrt=dl.REPEAT_SQRT
            )
        )
    elif dl.SAMPLER_TRAIN != "TrainingSampler":
        raise ConversionError(
            f"DATALOADER.SAMPLER_TRAIN={dl.SAMPLER_TRAIN!r}: use TrainingSampler or RepeatFactorTrainingSampler"
        )

    test_names = list(cfg.DATASETS.TEST)
    if not test_names:
        notes.append("DATASETS.TEST is empty: the file keeps no test loader and no evaluator.")
        return dataloader
    if len(test_names) > 1:
        notes.append(
            f"DATASETS.TEST names {len(test_names)} datasets; detectron2 evaluates each one, the file evaluates "
            f"the first ({test_names[0]}). Set dataloader.test.dataset.names to evaluate another."
        )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test_names[0], filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            # An int short edge: "choice" (detectron2) and "range" (the default) pick the same size.
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=inp.MIN_SIZE_TEST, max_size=inp.MAX_SIZE_TEST)],
            image_format=inp.FORMAT,
        ),
        num_workers=dl.NUM_WORKERS,
    )
    dataloader.evaluator = L(COCOEvaluator)(dataset_name=test_names[0])
    return dataloader


def _optimizer(cfg: CfgNode) -> DictConfig:
    """``L(torch.optim.SGD)`` with the parameter groups of ``build_optimizer(cfg, model)``
    (``params.model`` is set by the training tool)."""
    from d2lite.solver import get_default_optimizer_params

    s = cfg.SOLVER
    params = L(get_default_optimizer_params)(weight_decay_norm=s.WEIGHT_DECAY_NORM)
    if s.BIAS_LR_FACTOR != 1.0:
        params.base_lr = "${..lr}"
        params.bias_lr_factor = s.BIAS_LR_FACTOR
    if s.WEIGHT_DECAY_BIAS is not None:
        params.weight_decay_bias = s.WEIGHT_DECAY_BIAS
    return L(torch.optim.SGD)(
        params=params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV, weight_decay=s.WEIGHT_DECAY
    )


def _lr_multiplier(cfg: CfgNode) -> DictConfig:
    """The multiplier that ``build_lr_scheduler(cfg, optimizer)`` steps along."""
    from d2lite.solver import WarmupParamScheduler

    s = cfg.SOLVER
    if s.MAX_ITER <= 0:
        raise ConversionError(f"SOLVER.MAX_ITER must be > 0, got {s.MAX_ITER}")
    if s.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        steps = [x for x in s.STEPS if x <= s.MAX_ITER]
        scheduler = L(MultiStepParamScheduler)(
            values=[s.GAMMA**k for k in range(len(steps) + 1)], milestones=steps, num_updates=s.MAX_ITER
        )
    elif s.LR_SCHEDULER_NAME == "WarmupCosineLR":
        scheduler = L(CosineParamScheduler)(start_value=1, end_value=s.BASE_LR_END / s.BASE_LR)
    elif s.LR_SCHEDULER_NAME == "WarmupStepWithFixedGammaLR":
        scheduler = L(StepWithFixedGammaParamScheduler)(
            base_value=1.0, gamma=s.GAMMA, num_decays=s.NUM_DECAYS, num_updates=s.MAX_ITER
        )
    else:
        raise ConversionError(
            f"SOLVER.LR_SCHEDULER_NAME={s.LR_SCHEDULER_NAME!r}: use WarmupMultiStepLR, WarmupCosineLR or "
            "WarmupStepWithFixedGammaLR"
        )
    multiplier = L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
        warmup_method=s.WARMUP_METHOD,
        warmup_factor=s.WARMUP_FACTOR,
    )
    if s.RESCALE_INTERVAL:
        multiplier.rescale_interval = True
    return multiplier


def _train(cfg: CfgNode, notes: List[str]) -> Dict[str, Any]:
    """The keys of configs/common/train.py's ``train`` that the YAML config determines."""
    s = cfg.SOLVER
    train: Dict[str, Any] = {
        "output_dir": cfg.OUTPUT_DIR,
        "init_checkpoint": cfg.MODEL.WEIGHTS,
        "max_iter": s.MAX_ITER,
        "amp": {"enabled": s.AMP.ENABLED},
        "checkpointer": {"period": s.CHECKPOINT_PERIOD},
        "eval_period": cfg.TEST.EVAL_PERIOD,
        "device": cfg.MODEL.DEVICE,
        "seed": cfg.SEED,
        "clip_grad": {"enabled": s.CLIP_GRADIENTS.ENABLED},
    }
    if s.CLIP_GRADIENTS.ENABLED:
        clip = s.CLIP_GRADIENTS
        train["clip_grad"].update(clip_type=clip.CLIP_TYPE, clip_value=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE)
        if clip.CLIP_TYPE == "norm":
            notes.append(
                "SOLVER.CLIP_GRADIENTS with CLIP_TYPE 'norm': detectron2 clips the gradient norm of each parameter "
                "on its own, train.clip_grad clips the norm of all gradients together (build_optimizer(cfg, model) "
                "keeps detectron2's per-parameter clipping)."
            )
    if s.REFERENCE_WORLD_SIZE:
        notes.append(
            f"SOLVER.REFERENCE_WORLD_SIZE={s.REFERENCE_WORLD_SIZE} is not applied: d2lite does not rescale the batch "
            "size, learning rate and schedule to the number of processes."
        )
    if cfg.TEST.EXPECTED_RESULTS:
        notes.append("TEST.EXPECTED_RESULTS is not used by d2lite's tools.")
    return train


def yacs_to_lazy(cfg: CfgNode, notes: Optional[List[str]] = None) -> DictConfig:
    """The LazyConfig equivalent of a detectron2-style config.

    Args:
        cfg: a config from :func:`d2lite.config.get_cfg` (after ``merge_from_file`` etc.).
        notes: if given, settings that convert with a caveat are described here.

    Returns:
        a DictConfig with ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier`` and
        ``train`` (the keys of configs/common/train.py that the YAML determines).
        ``instantiate(out.model)`` equals ``build_model(cfg)``; ``optimizer`` (with
        ``params.model`` set) and ``LRMultiplier(opt, instantiate(out.lr_multiplier),
        out.train.max_iter)`` equal ``build_optimizer``/``build_lr_scheduler``.

    Raises:
        ConversionError: naming the key whose setting has no LazyConfig equivalent.
    """
    notes = [] if notes is None else notes
    root = OmegaConf.create(flags={"allow_objects": True})
    root.model = _model(cfg)
    root.dataloader = _dataloader(cfg, notes)
    root.optimizer = _optimizer(cfg)
    root.lr_multiplier = _lr_multiplier(cfg)
    root.train = _train(cfg, notes)
    return root


# ----------------------------------------------------------------------------------------------
# Differences from configs/common
# ----------------------------------------------------------------------------------------------


def _target_of(node: Any) -> Any:
    from d2lite.utils.registry import locate

    target = node.get("_target_") if isinstance(node, abc.Mapping) else None
    return locate(target) if isinstance(target, str) else target


def _signature_defaults(target: Any) -> Dict[str, Any]:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    return {
        n: p.default
        for n, p in params.items()
        if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _canon(x: Any) -> Any:
    """Comparable form: LazyCall nodes with their callable's defaults filled in, sequences
    as lists, dataclass objects (ShapeSpec) as the nodes that build them."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = {"_target_": type(x), **{f.name: getattr(x, f.name) for f in dataclasses.fields(x)}}
    if isinstance(x, abc.Mapping):
        out = {k: _canon(v) for k, v in x.items()}
        if "_target_" in out:
            out["_target_"] = _target_of(x)
            for k, v in _signature_defaults(out["_target_"]).items():
                out.setdefault(k, _canon(v))
        return out
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    return x


def _is_interpolation(x: Any) -> bool:
    return isinstance(x, str) and x.startswith("${")


def _diff(raw: Any, resolved: Any, target: Any, path: str, out: Dict[str, Any], skip_interpolations: bool) -> None:
    """Add to ``out`` (key path -> value) what must be assigned so that the base (``raw``
    unresolved, ``resolved`` resolved) builds what ``target`` builds."""
    if isinstance(target, abc.Mapping) and isinstance(resolved, abc.Mapping):
        base_target, new_target = _target_of(resolved), _target_of(target)
        if base_target is new_target:
            if new_target is not None:
                defaults = _signature_defaults(new_target)
                for k in resolved:
                    if k != "_target_" and k not in target:
                        # A base argument the target leaves out must already be at its default.
                        if k not in defaults or _canon(resolved[k]) != _canon(defaults[k]):
                            out[path] = target
                            return
            for k, v in target.items():
                if k == "_target_":
                    continue
                sub = f"{path}.{k}"
                if k in resolved:
                    _diff(raw[k], resolved[k], v, sub, out, skip_interpolations)
                elif new_target is None or k not in defaults or _canon(v) != _canon(defaults[k]):
                    out[sub] = v
            return
    if _canon(resolved) == _canon(target) or (_is_interpolation(raw) and raw == target):
        return
    if skip_interpolations and _is_interpolation(raw):
        return  # may resolve to the target once the value it points to is overridden
    out[path] = target


def _set_path(root: DictConfig, path: str, value: Any) -> None:
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _overrides(base: DictConfig, target: DictConfig) -> Dict[str, Any]:
    """Assignments (key path -> value) that turn ``base`` into ``target``, for the sections of ``base``."""
    out: Dict[str, Any] = {}
    for skip in (True, False):  # the second pass catches interpolations that still differ
        raw = OmegaConf.to_container(base, resolve=False, structured_config_mode=SCMode.INSTANTIATE)
        resolved = OmegaConf.to_container(base, resolve=True, structured_config_mode=SCMode.INSTANTIATE)
        found: Dict[str, Any] = {}
        for section in base:
            _diff(raw[section], resolved[section], _container(target[section]), section, found, skip)
        for path, value in found.items():
            _set_path(base, path, value)
            out[path] = value
    return out


def _container(node: Any) -> Any:
    """Plain containers (dataclass nodes such as ShapeSpec become the objects again)."""
    if not OmegaConf.is_config(node):
        return node
    return OmegaConf.to_container(node, resolve=False, structured_config_mode=SCMode.INSTANTIATE)


class _Expressions:
    """Stand-ins for values that :func:`to_py` cannot write (dataclass objects such as
    ShapeSpec), replaced by their constructor call after rendering."""

    def __init__(self) -> None:
        self.sources: Dict[str, str] = {}
        self.imports: List[str] = []

    def substitute(self, x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            cls = type(x)
            fields = [f for f in dataclasses.fields(x) if getattr(x, f.name) != f.default]
            source = f"{cls.__name__}({', '.join(f'{f.name}={getattr(x, f.name)!r}' for f in fields)})"
            token = f"__d2lite_expression_{len(self.sources)}__"
            self.sources[token] = source
            module = cls.__module__.rsplit(".", 1)[0] if cls.__module__.startswith("d2lite.") else cls.__module__
            self.imports.append(f"from {module} import {cls.__name__}")
            return token
        if isinstance(x, abc.Mapping):
            return {k: self.substitute(v) for k, v in x.items()}
        if isinstance(x, list):
            return [self.substitute(v) for v in x]
        if isinstance(x, tuple):
            return tuple(self.substitute(v) for v in x)
        return x

    def restore(self, text: str) -> str:
        for token, source in self.sources.items():
            text = text.replace(repr(token), source)
        return text


def lazy_config_source(cfg: CfgNode, source: str = "a detectron2 config") -> str:
    """The text of a LazyConfig file equivalent to ``cfg`` (see :func:`convert_yacs_config`)."""
    from d2lite.model_zoo import get_config

    notes: List[str] = []
    target = yacs_to_lazy(cfg, notes)
    base = OmegaConf.create(flags={"allow_objects": True})
    for section, (path, attr) in _COMMON.items():
        base[section] = get_config(path)[attr]
    overrides = _overrides(base, target)
    removals = [
        f"del dataloader.{k}" for k in ("test", "evaluator") if k in base.dataloader and k not in target.dataloader
    ]

    expressions = _Expressions()
    body = to_py(expressions.substitute({"lr_multiplier": _container(target.lr_multiplier), **overrides}), "")
    body = expressions.restore(body)
    imports, _, assignments = body.partition("\n\n") if body.startswith("from ") else ("", "", body)
    import_lines = _merge_imports(imports, ["from d2lite.model_zoo import get_config", *expressions.imports])
    for note in notes:
        logger.warning(f"{source}: {note}")
    notes_text = "".join(f"\n- {n}" for n in notes)
    header = (
        f'"""LazyConfig converted from a detectron2 YAML config by tools/convert_yacs_config.py:\n{source}\n\n'
        "It starts from d2lite's configs/common files and sets the values in which the YAML\n"
        "config differs from them; `d2lite.modeling.build_model(cfg)` on the YAML builds the same model."
        + (f"\n\nNotes:{notes_text}" if notes else "")
        + '\n"""\n'
    )
    sections = "\n".join(f'{section} = get_config("{path}").{attr}' for section, (path, attr) in _COMMON.items())
    text = header + "\n" + import_lines + "\n\n" + sections + "\n\n" + assignments
    if removals:
        text += "\n".join(removals) + "\n"
    return text


def _merge_imports(block: str, extra: List[str]) -> str:
    """``from M import ...`` statements of ``block`` plus ``extra`` (deduplicated), sorted by module."""
    statements = [s if s.startswith("from ") else "from " + s for s in block.strip().split("\nfrom ") if s]
    statements += [s for s in dict.fromkeys(extra) if s not in statements]
    return "\n".join(sorted(statements, key=lambda s: s.split()[1]))


def convert_yacs_config(config_file: str, opts: Sequence[str] = ()) -> str:
    """Convert a detectron2 YAML config file (with its ``_BASE_`` files) into LazyConfig source.

    Args:
        config_file: the YAML file, read like ``get_cfg().merge_from_file(config_file)``.
        opts: ``KEY VALUE`` pairs merged after the file (``cfg.merge_from_list(opts)``).

    Returns:
        the text of a ``.py`` file that :meth:`LazyConfig.load` reads and
        ``tools/lazyconfig_train_net.py`` trains.

    Raises:
        ConversionError: a setting without a LazyConfig equivalent (names the key).
        KeyError / ValueError / FileNotFoundError: from loading the YAML (name file and key).
    """
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return lazy_config_source(cfg, source=str(config_file))
