"""COCO data, optimiser, schedule and training settings of mmdetection's RTMDet 300e recipe.

Differences from mmdetection (documented in the project README): no CachedMosaic /
CachedMixUp / YOLOXHSVRandomAug; the train pipeline is mmdetection's stage-2
pipeline (random resize 0.5-2.0 of 640x640, random 640x640 crop padded with 114,
horizontal flip) approximated by d2lite's ResizeScale + FixedSizeCrop + RandomFlip.
"""

from d2lite.config import LazyCall as L
from d2lite.data import transforms as T
from d2lite.model_zoo import get_config
from d2lite.solver import WarmupParamScheduler
from d2lite.solver.lr_scheduler import FlatCosineParamScheduler
from rtmdet import ExpMomentum

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(min_scale=0.5, max_scale=2.0, target_height=640, target_width=640),
    L(T.FixedSizeCrop)(crop_size=(640, 640), pad=True, pad_value=114.0),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 256  # 8 GPUs x 32
dataloader.train.num_workers = 10
# mmdetection test: Resize(640, 640, keep_ratio) + Pad(640, 640, 114) -> long edge 640
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=640, max_size=640)]
dataloader.test.num_workers = 10

# AdamW lr 0.004, weight decay 0.05, none on norm layers and biases
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 0.004
optimizer.weight_decay = 0.05
optimizer.params.weight_decay_norm = 0.0
optimizer.params.weight_decay_bias = 0.0

# 300 epochs of ceil(117266 / 256) = 459 iterations
MAX_ITER = 300 * 459
# linear warmup over 1000 iterations from 1e-5, flat until epoch 150, cosine to 0.05 x lr
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(FlatCosineParamScheduler)(start_value=1.0, end_value=0.05, flat_fraction=0.5),
    warmup_length=1000 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=1e-5,
)

train = get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = 10 * 459
train.checkpointer.period = 10 * 459
train.checkpointer.max_to_keep = 3
# mmdetection's ExpMomentumEMA: momentum 0.0002, gamma 2000, BN buffers averaged; evaluated
train.ema.enabled = True
train.ema.momentum = 0.0002
train.ema.momentum_fn = L(ExpMomentum)(momentum=0.0002, gamma=2000)
train.ema.update_buffers = True
train.ema.use_for_eval = True
