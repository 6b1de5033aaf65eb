"""RTMDet-s on COCO, 300 epochs at batch 256 (mmdetection's rtmdet_s_8xb32-300e_coco.py).

mmdetection reports 44.6 box AP. Same recipe as mmdetection's: the backbone starts from
the ImageNet CSPNeXt-s checkpoint (``rtmdet-backbone://`` prefix, see
``rtmdet/pretrained.py``; offline, download the URL and pass
``train.init_checkpoint=rtmdet-backbone:///path/to/cspnext-s_imagenet_600e.pth``), the
two-stage data pipeline with RandomResize ratios 0.5-2.0 (RTMDet-l: 0.1-2.0).
Train: ``python tools/lazyconfig_train_net.py --config-file
projects/RTMDet/configs/rtmdet_s_8xb32-300e_coco.py --num-gpus 8``.
"""

from d2lite.config import LazyCall as L
from d2lite.layers import ShapeSpec
from rtmdet import BACKBONE_PREFIX
from rtmdet import transforms as RT
from rtmdet.mix_transforms import CachedMixUp, CachedMosaic

from .common.coco_300e import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .common.rtmdet_model import model

model.backbone.bottom_up.deepen_factor = 0.33
model.backbone.bottom_up.widen_factor = 0.5
model.backbone.out_channels = 128
model.backbone.num_csp_blocks = 1
model.head.input_shape = [ShapeSpec(channels=128, stride=s) for s in (8, 16, 32)]
model.head.feat_channels = 128
model.head.exp_on_reg = False

dataloader.train.mapper.augmentations = [
    L(CachedMosaic)(img_scale=(640, 640), pad_val=114.0, max_cached_images=40, random_pop=True),
    L(RT.RandomResize)(scale=(1280, 1280), ratio_range=(0.5, 2.0), keep_ratio=True),
    L(RT.RandomCrop)(crop_size=(640, 640)),
    L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
    L(RT.RandomFlip)(prob=0.5),
    L(RT.Pad)(size=(640, 640), pad_val=114),
    L(CachedMixUp)(img_scale=(640, 640), ratio_range=(1.0, 1.0), max_cached_images=20, random_pop=True, pad_val=114.0),
]
dataloader.train_stage2.mapper.augmentations = [
    L(RT.RandomResize)(scale=(640, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    L(RT.RandomCrop)(crop_size=(640, 640)),
    L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
    L(RT.RandomFlip)(prob=0.5),
    L(RT.Pad)(size=(640, 640), pad_val=114),
]

train.init_checkpoint = (
    BACKBONE_PREFIX
    + "https://download.openmmlab.com/mmdetection/v3.0/rtmdet/cspnext_rsb_pretrain/cspnext-s_imagenet_600e.pth"
)
train.output_dir = "./output/rtmdet_s_8xb32-300e_coco"
