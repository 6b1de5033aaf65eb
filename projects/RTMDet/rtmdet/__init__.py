"""RTMDet (mmdetection 3.x) as a d2lite project.

Installed as the ``rtmdet`` package (``pip install -e projects/RTMDet``, done by the
Makefile), so ``import rtmdet`` works from anywhere and the configs need no ``sys.path``."""

from .assigner import AssignResult, DynamicSoftLabelAssigner, bbox_overlaps
from .backbone import CSPNeXt, CSPNeXtPAFPN
from .converter import convert_mmdet_state_dict, load_mmdet_checkpoint, to_mmdet_state_dict
from .ema import ExpMomentum
from .export import RTMDetExportAdapter  # registers RTMDet with d2lite.export (tools/deploy/export_model.py)
from .head import RTMDetSepBNHead
from .hooks import PipelineSwitchHook
from .layers import ChannelAttention, ConvModule, CSPLayer, CSPNeXtBlock, DepthwiseSeparableConvModule, SPPBottleneck
from .losses import GIoULoss, QualityFocalLoss, giou_loss, quality_focal_loss
from .mapper import RTMDetDatasetMapper
from .mix_transforms import CachedMixUp, CachedMosaic
from .pretrained import BACKBONE_PREFIX, convert_backbone_state_dict
from .prior_generator import DistancePointBBoxCoder, MlvlPointGenerator, bbox2distance, distance2bbox
from .rtmdet import RTMDet
from .transforms import DetAugInput, SampleRejected, YOLOXHSVRandomAug

# The single-image transforms of the training recipe (RandomResize, RandomCrop, RandomFlip,
# Pad) keep mmdetection's names, so they stay in ``rtmdet.transforms`` rather than
# shadowing d2lite's ``d2lite.data.transforms`` names here.

__all__ = [k for k in globals().keys() if not k.startswith("_")]
