"""RetinaNet R50-FPN, 3x schedule (270k iterations at batch 16) on COCO 2017.

detectron2 reference: 38.7 box AP (model_final_5bd44e.pkl).
"""

from ..common.coco_schedule import lr_multiplier_3x as lr_multiplier
from .retinanet_R_50_FPN_1x import dataloader, model, optimizer, train

train.max_iter = 270000
