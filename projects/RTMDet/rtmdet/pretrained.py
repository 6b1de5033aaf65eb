"""ImageNet-pretrained CSPNeXt backbones (mmdetection / mmpretrain checkpoints) as
``train.init_checkpoint``.

mmdetection's RTMDet-tiny/s configs start the backbone from
``cspnext-{tiny,s}_imagenet_600e.pth`` with ``init_cfg=dict(type='Pretrained',
prefix='backbone.', checkpoint=URL)``: only the checkpoint's ``backbone.*`` weights are
loaded, into the backbone. In d2lite the same file is named with the
``rtmdet-backbone://`` prefix::

    train.init_checkpoint = "rtmdet-backbone://https://download.openmmlab.com/.../cspnext-tiny_imagenet_600e.pth"
    train.init_checkpoint = "rtmdet-backbone:///data/cspnext-tiny_imagenet_600e.pth"   # downloaded by hand

Importing :mod:`rtmdet` registers a PathManager handler for the prefix: it fetches the
file (URLs go to the iopath cache; offline, the error names the URL and the
command-line override to use instead), keeps the ``backbone.`` keys of its state dict
renamed to ``backbone.bottom_up.`` (the CSPNeXt inside :class:`~rtmdet.CSPNeXtPAFPN`),
drops the rest (the classifier head), and returns a converted d2lite checkpoint in the
cache. d2lite's checkpointer then loads it like any ``init_checkpoint``: the neck and
head keep their initialisation (listed as missing in the log) and ``--resume`` still
prefers the run's last checkpoint.
"""

import hashlib
import logging
import os
from typing import Any, Dict, List, Mapping

import torch
from iopath.common.file_io import PathHandler

from d2lite.utils.file_io import DownloadError, PathManager, get_cache_dir

__all__ = ["BACKBONE_PREFIX", "convert_backbone_state_dict", "RTMDetBackboneHandler"]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "rtmdet-backbone://"


def convert_backbone_state_dict(checkpoint: Mapping[str, Any], prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """The ``prefix`` weights of an mmengine/mmpretrain checkpoint, renamed for RTMDet.

    Args:
        checkpoint: ``{"state_dict": {...}, "meta": ...}`` (mmengine), ``{"model": {...}}``
            or a bare state dict.
        prefix: keys kept (mmdetection's ``init_cfg.prefix``). Defaults to "backbone.".

    Returns:
        ``{"backbone.bottom_up." + key[len(prefix):]: tensor}``, e.g.
        ``backbone.stem.0.conv.weight`` -> ``backbone.bottom_up.stem.0.conv.weight``.

    Raises:
        KeyError: no key starts with ``prefix`` (naming a few keys that were found).
    """
    state_dict = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get(key, None), Mapping):
            state_dict = state_dict[key]
            break
    out = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(prefix):
            out["backbone.bottom_up." + name[len(prefix) :]] = value
    if not out:
        raise KeyError(f"No weights start with {prefix!r} in this checkpoint; its keys begin {list(state_dict)[:5]}.")
    return out


class RTMDetBackboneHandler(PathHandler):
    """PathManager handler of ``rtmdet-backbone://<URL or path>`` (see the module docstring)."""

    def _get_supported_prefixes(self) -> List[str]:
        return [BACKBONE_PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        source = path[len(BACKBONE_PREFIX) :]
        if not source:
            raise ValueError(f"{path!r} names no checkpoint after {BACKBONE_PREFIX!r}.")
        try:
            local = source if os.path.isfile(source) else PathManager.get_local_path(source, **kwargs)
        except DownloadError as e:
            name = os.path.basename(source)
            raise DownloadError(
                f"{e} For the pretrained backbone keep the prefix: download {source} by hand and set "
                f"train.init_checkpoint={BACKBONE_PREFIX}/path/to/{name}"
            ) from e
        if not os.path.isfile(local):
            raise FileNotFoundError(f"Pretrained backbone checkpoint {source} not found (from {path}).")
        stat = os.stat(local)
        key = hashlib.sha1(f"{os.path.abspath(local)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out_dir = os.path.join(get_cache_dir(), "rtmdet_backbones")
        out = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(local))[0]}.{key}.d2lite.pth")
        if not os.path.isfile(out):
            data = torch.load(local, map_location="cpu", weights_only=False)
            model = convert_backbone_state_dict(data)
            os.makedirs(out_dir, exist_ok=True)
            tmp = f"{out}.{os.getpid()}.tmp"
            torch.save({"model": model, "__author__": f"rtmdet-backbone from {source}"}, tmp)
            os.replace(tmp, out)
            logger.info(f"Converted the backbone weights of {source} ({len(model)} tensors) to {out}")
        return out

    def _open(self, path: str, mode: str = "r", **kwargs: Any) -> Any:
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


PathManager.register_handler(RTMDetBackboneHandler())
