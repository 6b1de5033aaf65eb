"""RTMDet-tiny on COCO, 300 epochs at batch 256 (mmdetection's rtmdet_tiny_8xb32-300e_coco.py).

mmdetection reports 41.1 box AP (with Mosaic/MixUp and an ImageNet-pretrained
CSPNeXt-tiny; see the project README). 4.87M parameters.
"""

from d2lite.layers import ShapeSpec

from .common.coco_300e import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .common.rtmdet_model import model

model.backbone.bottom_up.deepen_factor = 0.167
model.backbone.bottom_up.widen_factor = 0.375
model.backbone.out_channels = 96
model.backbone.num_csp_blocks = 1
model.head.input_shape = [ShapeSpec(channels=96, stride=s) for s in (8, 16, 32)]
model.head.feat_channels = 96
model.head.exp_on_reg = False

train.output_dir = "./output/rtmdet_tiny_8xb32-300e_coco"
