"""RTMDet-tiny trained from scratch on the built-in shapes dataset, on a CPU.

``make rtmdet-demo`` (= ``python tools/lazyconfig_train_net.py --config-file
projects/RTMDet/configs/rtmdet_tiny_shapes.py``). Result and time: project README.
Changes from the COCO recipe: 3 classes, 224x224 crops (shapes images are
128-256 px), batch 8, 600 iterations with a 50-iteration warmup, no pretrained backbone,
and a light data pipeline (random resize 0.75-1.25, 224x224 crop, flip; no Mosaic,
MixUp or HSV and no pipeline switch): on this short CPU run the full two-stage recipe
(``rtmdet_tiny_shapes_recipe.py``) gave a lower AP, measured in the project README.
Same model (RTMDet-tiny), losses, assigner, AdamW, flat-cosine schedule and EMA.
"""

from d2lite.config import LazyCall as L
from d2lite.data import DatasetMapper
from d2lite.data import transforms as T
from d2lite.layers import ShapeSpec
from d2lite.solver import WarmupParamScheduler
from d2lite.solver.lr_scheduler import FlatCosineParamScheduler

from .common.coco_300e import dataloader, optimizer, train  # noqa: F401
from .common.rtmdet_model import model

MAX_ITER = 600

dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
dataloader.train.mapper = L(DatasetMapper)(
    is_train=True,
    augmentations=[
        L(T.ResizeScale)(min_scale=0.75, max_scale=1.25, target_height=224, target_width=224),
        L(T.FixedSizeCrop)(crop_size=(224, 224), pad=True, pad_value=114.0),
        L(T.RandomFlip)(horizontal=True),
    ],
    image_format="BGR",
)
dataloader.train.aspect_ratio_grouping = True
del dataloader["train_stage2"]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=224, max_size=224)]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

model.backbone.bottom_up.deepen_factor = 0.167
model.backbone.bottom_up.widen_factor = 0.375
model.backbone.out_channels = 96
model.backbone.num_csp_blocks = 1
model.head.input_shape = [ShapeSpec(channels=96, stride=s) for s in (8, 16, 32)]
model.head.feat_channels = 96
model.head.exp_on_reg = False
model.num_classes = 3
model.fixed_input_size = None  # batches of 224x224 crops; test images pad to a multiple of 32
model.max_detections_per_image = 100
model.vis_period = 200  # ground truth vs. predictions in TensorBoard

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(FlatCosineParamScheduler)(start_value=1.0, end_value=0.05, flat_fraction=0.5),
    warmup_length=50 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=1e-3,
)

train.output_dir = "./output/rtmdet_tiny_shapes"
train.max_iter = MAX_ITER
train.eval_period = MAX_ITER  # evaluate once, at the end
train.checkpointer.period = 200
train.log_period = 20
train.device = "cpu"
train.hooks = []  # no pipeline switch
