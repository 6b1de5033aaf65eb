"""COCO data, optimiser, schedule and training settings of mmdetection's RTMDet 300e recipe
(``rtmdet_l_8xb32-300e_coco.py``; the tiny/s leaf configs change the pipeline numbers).

Training data, as mmdetection: stage 1 (epochs 0-279) CachedMosaic, RandomResize of
1280x1280 by 0.1-2.0, RandomCrop 640x640, YOLOXHSVRandomAug, RandomFlip 0.5, Pad to
640x640 with 114, CachedMixUp; stage 2 (the last 20 epochs, ``dataloader.train_stage2``)
the same without Mosaic/MixUp and with RandomResize of 640x640. ``PipelineSwitchHook``
(``train.hooks``) switches at iteration 280 x 459 and from then on evaluates every epoch
(mmdetection's ``dynamic_intervals``). Project README: the table of equivalences.
"""

from d2lite.config import LazyCall as L
from d2lite.data import build_detection_train_loader
from d2lite.data import transforms as T
from d2lite.model_zoo import get_config
from d2lite.solver import WarmupParamScheduler
from d2lite.solver.lr_scheduler import FlatCosineParamScheduler
from rtmdet import ExpMomentum, PipelineSwitchHook, RTMDetDatasetMapper
from rtmdet import transforms as RT
from rtmdet.mix_transforms import CachedMixUp, CachedMosaic

# 300 epochs of ceil(117266 / 256) = 459 iterations; the last 20 epochs are stage 2
ITERS_PER_EPOCH = 459
MAX_EPOCHS = 300
STAGE2_EPOCHS = 20

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper = L(RTMDetDatasetMapper)(
    augmentations=[
        L(CachedMosaic)(img_scale=(640, 640), pad_val=114.0, max_cached_images=40, random_pop=True),
        L(RT.RandomResize)(scale=(1280, 1280), ratio_range=(0.1, 2.0), keep_ratio=True),
        L(RT.RandomCrop)(crop_size=(640, 640)),
        L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
        L(RT.RandomFlip)(prob=0.5),
        L(RT.Pad)(size=(640, 640), pad_val=114),
        L(CachedMixUp)(
            img_scale=(640, 640), ratio_range=(1.0, 1.0), max_cached_images=20, random_pop=True, pad_val=114.0
        ),
    ],
    image_format="BGR",
)
dataloader.train.aspect_ratio_grouping = False  # mmdetection: batch_sampler=None
dataloader.train.total_batch_size = 256  # 8 GPUs x 32
dataloader.train.num_workers = 10
# stage 2: same dataset, batch and workers as dataloader.train
dataloader.train_stage2 = L(build_detection_train_loader)(
    dataset="${..train.dataset}",
    mapper=L(RTMDetDatasetMapper)(
        augmentations=[
            L(RT.RandomResize)(scale=(640, 640), ratio_range=(0.1, 2.0), keep_ratio=True),
            L(RT.RandomCrop)(crop_size=(640, 640)),
            L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
            L(RT.RandomFlip)(prob=0.5),
            L(RT.Pad)(size=(640, 640), pad_val=114),
        ],
        image_format="${...train.mapper.image_format}",
    ),
    total_batch_size="${..train.total_batch_size}",
    aspect_ratio_grouping="${..train.aspect_ratio_grouping}",
    num_workers="${..train.num_workers}",
)
# mmdetection test: Resize(640, 640, keep_ratio) + Pad(640, 640, 114) -> long edge 640
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=640, max_size=640)]
dataloader.test.num_workers = 10

# AdamW lr 0.004, weight decay 0.05, none on norm layers and biases
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 0.004
optimizer.weight_decay = 0.05
optimizer.params.weight_decay_norm = 0.0
optimizer.params.weight_decay_bias = 0.0

MAX_ITER = MAX_EPOCHS * ITERS_PER_EPOCH
# linear warmup over 1000 iterations from 1e-5, flat until epoch 150, cosine to 0.05 x lr
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(FlatCosineParamScheduler)(start_value=1.0, end_value=0.05, flat_fraction=0.5),
    warmup_length=1000 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=1e-5,
)

train = get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = 10 * ITERS_PER_EPOCH
train.checkpointer.period = 10 * ITERS_PER_EPOCH
train.checkpointer.max_to_keep = 3
# mmdetection's ExpMomentumEMA: momentum 0.0002, gamma 2000, BN buffers averaged; evaluated
train.ema.enabled = True
train.ema.momentum = 0.0002
train.ema.momentum_fn = L(ExpMomentum)(momentum=0.0002, gamma=2000)
train.ema.update_buffers = True
train.ema.use_for_eval = True
# stage 2 for the last 20 epochs, evaluated every epoch from then on
train.hooks = [
    L(PipelineSwitchHook)(
        switch_iter=(MAX_EPOCHS - STAGE2_EPOCHS) * ITERS_PER_EPOCH,
        loader="dataloader.train_stage2",
        eval_period=ITERS_PER_EPOCH,
    )
]
