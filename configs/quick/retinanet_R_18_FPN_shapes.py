"""RetinaNet R18-FPN trained from scratch on the built-in shapes dataset, on a CPU.

This is `make demo`: on a 2-core CPU it generates the data, trains (2 processes of
one thread: ``--num-gpus 2``, which on a CPU starts processes) and evaluates (on
shapes_val, then on the second generator's shapes_eval) in under 10 minutes, install
included; times, APs and how the recipe was chosen: benchmarks/README.md.
Changes from the COCO recipe: a half-width ResNet-18 with BatchNorm trained from
scratch, a 64-channel FPN on P3-P5 with anchors of 16-101 px (shapes are 12-90 px),
a GroupNorm head of 2 convs per branch, GIoU box loss, AdamW, channels-last
tensors, training images at their native 128-256 px size (short edge 128-192),
test images upscaled to short edge 224.
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2lite.config import LazyCall as L
from d2lite.data import transforms as T
from d2lite.layers import ShapeSpec
from d2lite.modeling.backbone import BasicBlock, BasicStem, ResNet
from d2lite.solver import WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.retinanet import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

MAX_ITER = 1200

dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
# Native scale (the images are 128-256 px): 1.45x fewer pixels than short edge 160-224.
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128, 144, 160, 176, 192), sample_style="choice", max_size=320),
    L(T.RandomFlip)(horizontal=True),
]
# Tested upscaled: short edge 224 gave +6 AP on shapes_val and +5 on shapes_eval over 160.
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=224, max_size=448)]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

# ResNet-18 layout (2 BasicBlocks per stage) at half width: 32-64-128-256 channels.
WIDTH = 32
FPN_CHANNELS = 64
model.backbone.bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=WIDTH, norm="BN")
model.backbone.bottom_up.stages = [
    L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        stride_per_block=[1 if i == 0 else 2, 1],
        in_channels=WIDTH * 2 ** max(i - 1, 0),
        out_channels=WIDTH * 2**i,
        norm="BN",
    )
    for i in range(4)
]
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = FPN_CHANNELS
model.backbone.top_block = None
model.head_in_features = ["p3", "p4", "p5"]
model.head.input_shape = [ShapeSpec(channels=FPN_CHANNELS)] * 3
# 2 convs per branch (detectron2: 4): the head at P3 is most of the model's FLOPs.
model.head.conv_dims = [FPN_CHANNELS] * 2
# GroupNorm in the (shared) head: from scratch, it trains far faster than the plain head.
model.head.norm = "GN"
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64]]
model.anchor_generator.strides = [8, 16, 32]
model.num_classes = 3
model.box_reg_loss_type = "giou"
# Trained from scratch with BN: normalise by the real pixel std.
model.pixel_std = [57.375, 57.120, 58.395]

optimizer.lr = 2e-3
optimizer.weight_decay = 0.05
# One fused kernel for all parameters: the CPU optimizer step of this model takes 17 ms instead of 30.
optimizer.fused = True

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[80, 93, 100]),
    warmup_length=100 / MAX_ITER,
    warmup_factor=0.001,
)

train.output_dir = "./output/retinanet_R_18_FPN_shapes"
train.max_iter = MAX_ITER
train.eval_period = MAX_ITER  # evaluate once, at the end
train.checkpointer.period = 200
train.log_period = 20
train.vis_period = 200
train.device = "cpu"
train.channels_last = True  # ~15% faster convolutions on CPU
