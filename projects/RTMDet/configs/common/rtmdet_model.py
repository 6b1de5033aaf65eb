"""RTMDet-l model (mmdetection's rtmdet_l_8xb32-300e_coco.py); leaf configs change sizes.

Needs the ``rtmdet`` package installed (``pip install -e projects/RTMDet``; the
Makefile does it), also to load a config.yaml saved by a run.
"""

from d2lite.config import LazyCall as L
from d2lite.layers import ShapeSpec
from rtmdet import (
    CSPNeXt,
    CSPNeXtPAFPN,
    DynamicSoftLabelAssigner,
    GIoULoss,
    QualityFocalLoss,
    RTMDet,
    RTMDetSepBNHead,
)

model = L(RTMDet)(
    backbone=L(CSPNeXtPAFPN)(
        bottom_up=L(CSPNeXt)(
            arch="P5",
            deepen_factor=1.0,
            widen_factor=1.0,
            out_features=["stage2", "stage3", "stage4"],
            expand_ratio=0.5,
            channel_attention=True,
            # SyncBN with torch's defaults (eps 1e-5, momentum 0.1), as the released configs;
            # plain BN on one process.
            norm="SyncBN",
            act="SiLU",
        ),
        in_features=["stage2", "stage3", "stage4"],
        out_channels=256,
        num_csp_blocks=3,
        expand_ratio=0.5,
        norm="SyncBN",
        act="SiLU",
    ),
    head=L(RTMDetSepBNHead)(
        input_shape=[ShapeSpec(channels=256, stride=s) for s in (8, 16, 32)],
        num_classes="${..num_classes}",
        feat_channels=256,
        stacked_convs=2,
        share_conv=True,
        pred_kernel_size=1,
        exp_on_reg=True,
        with_objectness=False,
        norm="SyncBN",
        act="SiLU",
    ),
    head_in_features=["p3", "p4", "p5"],
    num_classes=80,
    # BGR input, no channel swap (bgr_to_rgb=False in mmdetection)
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.12, 58.395],
    input_format="BGR",
    assigner=L(DynamicSoftLabelAssigner)(soft_center_radius=3.0, topk=13, iou_weight=3.0),
    loss_cls=L(QualityFocalLoss)(beta=2.0, loss_weight=1.0),
    loss_bbox=L(GIoULoss)(loss_weight=2.0),
    pad_value=114.0,
    fixed_input_size=(640, 640),
    test_score_thresh=0.001,
    test_topk_candidates=30000,
    test_nms_thresh=0.65,
    max_detections_per_image=300,
)
