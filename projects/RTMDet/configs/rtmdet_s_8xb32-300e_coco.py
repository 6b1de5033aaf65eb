"""RTMDet-s on COCO, 300 epochs at batch 256 (mmdetection's rtmdet_s_8xb32-300e_coco.py).

mmdetection reports 44.6 box AP (with Mosaic/MixUp and an ImageNet-pretrained
CSPNeXt-s, neither of which d2lite ships; see the project README).
Train: ``python tools/lazyconfig_train_net.py --config-file
projects/RTMDet/configs/rtmdet_s_8xb32-300e_coco.py --num-gpus 8``.
"""

from d2lite.layers import ShapeSpec

from .common.coco_300e import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .common.rtmdet_model import model

model.backbone.bottom_up.deepen_factor = 0.33
model.backbone.bottom_up.widen_factor = 0.5
model.backbone.out_channels = 128
model.backbone.num_csp_blocks = 1
model.head.input_shape = [ShapeSpec(channels=128, stride=s) for s in (8, 16, 32)]
model.head.feat_channels = 128
model.head.exp_on_reg = False

train.output_dir = "./output/rtmdet_s_8xb32-300e_coco"
