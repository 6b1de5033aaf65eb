"""Building blocks shared by models: layers, norms, NMS and losses."""

from .batch_norm import FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm, SyncBatchNorm, get_norm
from .blocks import CNNBlockBase
from .losses import (
    ciou_loss,
    diou_loss,
    giou_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    smooth_l1_loss,
)
from .nms import batched_nms, nms
from .shape_spec import ShapeSpec
from .wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    cross_entropy,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
