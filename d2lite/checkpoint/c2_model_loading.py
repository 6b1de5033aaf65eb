"""Name conversion from Caffe2/Detectron weights and suffix-based state-dict alignment.

Caffe2 (Detectron, MSRA ImageNet models) blob names such as ``res2_0_branch2a_w``
become detectron2/d2lite parameter names such as ``res2.0.conv1.weight``; the
checkpoint keys are then matched to model keys by the longest complete suffix, so a
backbone checkpoint (``res2.0.conv1.weight``) fills
``backbone.bottom_up.res2.0.conv1.weight`` of a detector.
"""

import logging
import re
from collections import OrderedDict, defaultdict
from typing import Dict, List, Sequence, Tuple

import torch
from fvcore.common.checkpoint import (
    get_missing_parameters_message,
    get_unexpected_parameters_message,
)
from tabulate import tabulate

__all__ = [
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
    "align_and_update_state_dicts",
]

logger = logging.getLogger(__name__)

# (pattern, replacement) applied in order with re.sub after "_" -> "." replacement.
_BASIC_RULES: Sequence[Tuple[str, str]] = (
    (r"\.b$", ".bias"),
    (r"\.w$", ".weight"),
    # batch norm and group norm parameters are both called "norm" in d2lite
    (r"bn\.s$", "norm.weight"),
    (r"bn\.bias$", "norm.bias"),
    (r"bn\.rm$", "norm.running_mean"),
    (r"bn\.running\.mean$", "norm.running_mean"),
    (r"bn\.riv$", "norm.running_var"),
    (r"bn\.running\.var$", "norm.running_var"),
    (r"bn\.gamma$", "norm.weight"),
    (r"bn\.beta$", "norm.bias"),
    (r"gn\.s$", "norm.weight"),
    (r"gn\.bias$", "norm.bias"),
    # stem: "res_conv1_bn_*" is the stem's norm, "conv1_w" the stem's conv
    (r"^res\.conv1\.norm\.", "conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    # residual blocks
    (r"\.branch1\.", ".shortcut."),
    (r"\.branch2a\.", ".conv1."),
    (r"\.branch2b\.", ".conv2."),
    (r"\.branch2c\.", ".conv3."),
)


def convert_basic_c2_names(original_keys: List[str]) -> List[str]:
    """Convert Caffe2 backbone blob names to d2lite names (same order, same length).

    Examples: ``conv1_w -> stem.conv1.weight``, ``res_conv1_bn_s -> stem.conv1.norm.weight``,
    ``res_conv1_bn_b -> stem.conv1.norm.bias``, ``res2_0_branch2a_w -> res2.0.conv1.weight``,
    ``res2_0_branch1_bn_s -> res2.0.shortcut.norm.weight``, ``fc1000_w -> fc1000.weight``.
    """
    hard_coded = {"pred_b": "linear_b", "pred_w": "linear_w"}
    keys = [hard_coded.get(k, k).replace("_", ".") for k in original_keys]
    for pattern, repl in _BASIC_RULES:
        keys = [re.sub(pattern, repl, k) for k in keys]
    return keys


def _fpn_name(name: str) -> str:
    """``fpn.inner.res3.3.sum.lateral.weight -> fpn_lateral3.weight``,
    ``fpn.res3.3.sum.weight -> fpn_output3.weight``, ``fpn.6.weight -> top_block.p6.weight``."""
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner.res"):
        return f"fpn_lateral{int(parts[2][len('res') :])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{int(parts[1][len('res') :])}{norm}.{parts[-1]}"
    return re.sub(r"^fpn\.(6|7)\.", r"top_block.p\1.", name)


def _retinanet_name(name: str) -> str:
    """Detectron RetinaNet head blobs (shared across levels, named after fpn3) to
    d2lite's RetinaNetHead: conv n{i} -> subnet index 2*i (conv, ReLU pairs)."""
    m = re.match(r"^retnet\.(cls|bbox)\.conv\.n(\d+)\.fpn\d+\.(.*)$", name)
    if m:
        return f"head.{m.group(1)}_subnet.{2 * int(m.group(2))}.{m.group(3)}"
    name = re.sub(r"^retnet\.cls\.pred\.fpn\d+\.", "head.cls_score.", name)
    return re.sub(r"^retnet\.bbox\.pred\.fpn\d+\.", "head.bbox_pred.", name)


_DETECTRON_RULES: Sequence[Tuple[str, str]] = (
    # RPN (FPN variant shares the fpn2 conv across levels)
    (r"conv\.rpn\.fpn2", "proposal_generator.rpn_head.conv"),
    (r"conv\.rpn", "proposal_generator.rpn_head.conv"),
    (r"rpn\.bbox\.pred\.fpn2", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits\.fpn2", "proposal_generator.rpn_head.objectness_logits"),
    (r"rpn\.bbox\.pred", "proposal_generator.rpn_head.anchor_deltas"),
    (r"rpn\.cls\.logits", "proposal_generator.rpn_head.objectness_logits"),
    # Fast R-CNN box head
    (r"^bbox\.pred", "bbox_pred"),
    (r"^cls\.score", "cls_score"),
    (r"^fc6\.", "box_head.fc1."),
    (r"^fc7\.", "box_head.fc2."),
    (r"^head\.conv", "box_head.conv"),
)


def convert_c2_detectron_names(
    weights: Dict[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Map Caffe2 Detectron weight names to d2lite (detectron2) names.

    Covers the backbone (see :func:`convert_basic_c2_names`), FPN lateral/output convs
    and P6/P7, RPN, Fast R-CNN box head and the RetinaNet head. As in detectron2, the
    background row of ``cls_score`` moves from index 0 to the last index, and the
    background rows of ``bbox_pred`` (first 4) are dropped.

    Args:
        weights: C2 blob name -> tensor.

    Returns:
        (new name -> tensor, new name -> original C2 name)
    """
    logger.info("Remapping C2 weights ......")
    original_keys = sorted(weights.keys())
    keys = convert_basic_c2_names(original_keys)
    for pattern, repl in _DETECTRON_RULES:
        keys = [re.sub(pattern, repl, k) for k in keys]
    keys = [_retinanet_name(_fpn_name(k)) for k in keys]

    if len(set(keys)) != len(keys):
        dups = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(
            f"C2 name conversion produced duplicate names {dups}; the checkpoint "
            "contains blobs that map to the same d2lite parameter."
        )

    new_weights: Dict[str, torch.Tensor] = {}
    new_to_original: Dict[str, str] = {}
    for orig, renamed in zip(original_keys, keys):
        new_to_original[renamed] = orig
        value = weights[orig]
        if renamed.startswith("bbox_pred."):
            new_weights[renamed] = value[4:]
            logger.info(
                f"Remove prediction weight for background class in {renamed}. "
                f"The shape changes from {tuple(value.shape)} to "
                f"{tuple(new_weights[renamed].shape)}."
            )
        elif renamed.startswith("cls_score."):
            logger.info(
                f"Move classification weights for background class in {renamed} "
                f"from index 0 to index {value.shape[0] - 1}."
            )
            new_weights[renamed] = torch.cat([value[1:], value[:1]])
        else:
            new_weights[renamed] = value
    return new_weights, new_to_original


def _longest_common_prefix(names: List[str]) -> str:
    """Longest common prefix ending at a "." boundary, e.g. ['a.b.c', 'a.b.d'] -> 'a.b.'."""
    if not names:
        return ""
    split = [n.split(".") for n in names]
    prefix: List[str] = []
    for parts in zip(*split):
        if all(p == parts[0] for p in parts):
            prefix.append(parts[0])
        else:
            break
    # never swallow a full name: keep at least the last component
    prefix = prefix[: min(len(s) for s in split) - 1]
    return ".".join(prefix) + "." if prefix else ""


def _group_str(names: List[str]) -> str:
    """['a.b.weight', 'a.b.bias'] -> 'a.b.{weight,bias}'."""
    if len(names) == 1:
        return names[0]
    prefix = _longest_common_prefix(names)
    return prefix + "{" + ",".join(n[len(prefix) :] for n in names) + "}"


def _matched_table(
    matched: "OrderedDict[str, str]",
    model_state_dict: Dict[str, torch.Tensor],
    original_keys: Dict[str, str],
) -> str:
    """A table of matched names, one row per model module (keys sharing a parent)."""
    model_keys = sorted(matched.values())
    common = _longest_common_prefix(model_keys) if len(model_keys) > 1 else ""
    rev = {m: c for c, m in matched.items()}
    by_module: Dict[str, List[str]] = defaultdict(list)
    for k in model_keys:
        by_module[k.rsplit(".", 1)[0] if "." in k else k].append(k)
    rows = []
    for keys in by_module.values():
        rows.append(
            (
                _group_str([k[len(common) :] for k in keys]),
                _group_str([original_keys[rev[k]] for k in keys]),
                " ".join(str(tuple(model_state_dict[k].shape)).replace(" ", "") for k in keys),
            )
        )
    title = f"submodule {common[:-1]}" if common else "model"
    table = tabulate(rows, tablefmt="pipe", headers=["Names in Model", "Names in Checkpoint", "Shapes"])
    return f"Following weights matched with {title}:\n{table}"


def align_and_update_state_dicts(
    model_state_dict: Dict[str, torch.Tensor],
    ckpt_state_dict: Dict[str, torch.Tensor],
    c2_conversion: bool = True,
) -> Dict[str, torch.Tensor]:
    """Rename checkpoint keys to model keys by suffix matching.

    Each model key is matched to the *longest* checkpoint key that is a complete
    suffix of it ("." boundary): ``backbone.bottom_up.res2.0.conv1.weight`` matches
    ``res2.0.conv1.weight`` (not ``conv1.weight``); ``head.my_conv1.weight`` does not
    match ``conv1.weight``. If one checkpoint key would fill two model keys, that is
    ambiguous and raises ValueError (as in detectron2).

    Args:
        model_state_dict: the model's state dict (only names and shapes are used).
        ckpt_state_dict: checkpoint name -> tensor.
        c2_conversion: first convert Caffe2 names with :func:`convert_c2_detectron_names`.

    A matched pair whose shapes differ is logged (both names, both shapes) and skipped.

    Returns:
        A new state dict: matched values under the model's names, plus every unmatched
        checkpoint entry under its own (converted) name, so the loader reports it (as
        unexpected, or as a shape mismatch when the names are equal).
    """
    model_keys = sorted(model_state_dict.keys())
    if c2_conversion:
        ckpt_state_dict, original_keys = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_keys = {k: k for k in ckpt_state_dict.keys()}
    ckpt_keys = sorted(ckpt_state_dict.keys())

    def is_suffix(model_key: str, ckpt_key: str) -> bool:
        return model_key == ckpt_key or model_key.endswith("." + ckpt_key)

    matched: OrderedDict[str, str] = OrderedDict()  # checkpoint key -> model key
    result: Dict[str, torch.Tensor] = {}
    for key_model in model_keys:
        best = max((k for k in ckpt_keys if is_suffix(key_model, k)), key=len, default=None)
        if best is None:
            continue
        value = ckpt_state_dict[best]
        shape_model = tuple(model_state_dict[key_model].shape)
        if tuple(value.shape) != shape_model:
            logger.warning(
                f"Shape of {original_keys[best]} in checkpoint is {tuple(value.shape)}, while "
                f"shape of {key_model} in model is {shape_model}. {original_keys[best]} will "
                "not be loaded. Please double check and see if this is desired."
            )
            continue
        if best in matched:
            logger.error(
                f"Ambiguity found for {best} in checkpoint! It matches at least two "
                f"keys in the model ({matched[best]} and {key_model})."
            )
            raise ValueError(
                f"Cannot match one checkpoint key ({original_keys[best]}) to multiple keys in "
                f"the model ({matched[best]} and {key_model}). Rename the checkpoint keys or "
                "load the weights into the intended submodule."
            )
        matched[best] = key_model
        result[key_model] = value

    if not matched:
        logger.warning("No weights in checkpoint matched with model.")
    else:
        logger.info(_matched_table(matched, model_state_dict, original_keys))

    matched_model_keys = set(matched.values())
    unmatched_model = [k for k in model_keys if k not in matched_model_keys]
    if unmatched_model:
        logger.info(get_missing_parameters_message(unmatched_model))
    unmatched_ckpt = [k for k in ckpt_keys if k not in matched]
    if unmatched_ckpt:
        logger.info(get_unexpected_parameters_message([original_keys[k] for k in unmatched_ckpt]))
    for k in unmatched_ckpt:
        result[k] = ckpt_state_dict[k]
    return result
