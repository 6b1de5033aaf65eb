"""The CPU shapes demo (``rtmdet_tiny_shapes.py``) with mmdetection's full two-stage
RTMDet-tiny data recipe, scaled from 640 to the demo's 224 pixels.

Stage 1 (iterations 0-559): CachedMosaic 224x224 (20 cached, FIFO), RandomResize of
448x448 by 0.5-2.0, RandomCrop 224x224, YOLOXHSVRandomAug, RandomFlip 0.5, Pad 224 with
114, CachedMixUp (10 cached, FIFO, on half of the images). Stage 2 (the last 40 of 600
iterations, as 20 of 300 epochs): RandomResize of 224x224 by 0.5-2.0, crop, HSV, flip, pad.
The measured AP next to the plain demo is in the project README.
"""

from d2lite.config import LazyCall as L
from d2lite.data import build_detection_train_loader
from rtmdet import PipelineSwitchHook, RTMDetDatasetMapper
from rtmdet import transforms as RT
from rtmdet.mix_transforms import CachedMixUp, CachedMosaic

from .rtmdet_tiny_shapes import MAX_ITER, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

SIZE = 224

dataloader.train.mapper = L(RTMDetDatasetMapper)(
    augmentations=[
        L(CachedMosaic)(img_scale=(SIZE, SIZE), pad_val=114.0, max_cached_images=20, random_pop=False),
        L(RT.RandomResize)(scale=(2 * SIZE, 2 * SIZE), ratio_range=(0.5, 2.0), keep_ratio=True),
        L(RT.RandomCrop)(crop_size=(SIZE, SIZE)),
        L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
        L(RT.RandomFlip)(prob=0.5),
        L(RT.Pad)(size=(SIZE, SIZE), pad_val=114),
        L(CachedMixUp)(
            img_scale=(SIZE, SIZE),
            ratio_range=(1.0, 1.0),
            max_cached_images=10,
            random_pop=False,
            pad_val=114.0,
            prob=0.5,
        ),
    ],
    image_format="BGR",
)
dataloader.train.aspect_ratio_grouping = False
dataloader.train_stage2 = L(build_detection_train_loader)(
    dataset="${..train.dataset}",
    mapper=L(RTMDetDatasetMapper)(
        augmentations=[
            L(RT.RandomResize)(scale=(SIZE, SIZE), ratio_range=(0.5, 2.0), keep_ratio=True),
            L(RT.RandomCrop)(crop_size=(SIZE, SIZE)),
            L(RT.YOLOXHSVRandomAug)(hue_delta=5, saturation_delta=30, value_delta=30),
            L(RT.RandomFlip)(prob=0.5),
            L(RT.Pad)(size=(SIZE, SIZE), pad_val=114),
        ],
        image_format="${...train.mapper.image_format}",
    ),
    total_batch_size="${..train.total_batch_size}",
    aspect_ratio_grouping="${..train.aspect_ratio_grouping}",
    num_workers="${..train.num_workers}",
)

train.output_dir = "./output/rtmdet_tiny_shapes_recipe"
train.hooks = [L(PipelineSwitchHook)(switch_iter=MAX_ITER * 280 // 300, loader="dataloader.train_stage2")]
