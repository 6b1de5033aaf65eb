"""RetinaNet R50-FPN, 1x schedule (90k iterations at batch 16) on COCO 2017.

detectron2 reference: 37.4 box AP (model_final_bfca0b.pkl).
"""

from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

dataloader.train.mapper.image_format = "BGR"
model.backbone.bottom_up.freeze_at = 2
optimizer.lr = 0.01

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 90000
