"""Default values of detectron2's YAML (yacs) config, for the keys in d2lite's scope.

``get_cfg()`` returns a copy of ``_C``. Names and values are detectron2's
(``detectron2/config/defaults.py``) for box detection with RetinaNet on a ResNet/FPN
backbone. Keys that detectron2 has for other tasks (masks, keypoints, proposals, ROI
heads, rotated boxes, panoptic, test-time augmentation, ...) are listed in
:data:`OUT_OF_SCOPE_KEYS`: a detectron2 YAML that sets them still loads, and they are
dropped with one warning that lists them.

The LazyConfig files in ``configs/`` are d2lite's primary config path; this config
object exists so that detectron2's YAML files build the same components through
their ``from_config`` methods (see :func:`d2lite.modeling.build_model`).
"""

from .config import CfgNode as CN

__all__ = ["OUT_OF_SCOPE_KEYS"]

_C = CN()

# The version number, to upgrade from old configs to new ones. d2lite reads version 2.
_C.VERSION = 2

_C.MODEL = CN()
_C.MODEL.DEVICE = "cuda"
# A name registered in d2lite.modeling.META_ARCH_REGISTRY ("RetinaNet").
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Path (a file path, or URL like detectron2://.., https://..) to a checkpoint file
# to be loaded to the model (by the training tool, not by build_model).
_C.MODEL.WEIGHTS = ""
# Values to be used for image normalization (BGR order, since INPUT.FORMAT defaults to BGR).
# The MSRA ResNets absorbed the std into conv1, hence std 1.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

# -----------------------------------------------------------------------------
# INPUT
# -----------------------------------------------------------------------------
_C.INPUT = CN()
# Size of the smallest side of the image during training (ResizeShortestEdge).
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# "choice" (one of MIN_SIZE_TRAIN) or "range" (uniform in [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]]).
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Size of the smallest side of the image during testing; 0 disables resizing.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# "horizontal", "vertical" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"
_C.INPUT.CROP = CN({"ENABLED": False})
# See d2lite.data.transforms.RandomCrop.
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# Not in detectron2 (the key of AdelaiDet configs): crop around a random instance, its centre inside.
_C.INPUT.CROP.CROP_INSTANCE = False
# "BGR", "RGB" or "L".
_C.INPUT.FORMAT = "BGR"

# -----------------------------------------------------------------------------
# Dataset
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
# Names registered in DatasetCatalog.
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()

# -----------------------------------------------------------------------------
# DataLoader
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# "TrainingSampler" or "RepeatFactorTrainingSampler".
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------- #
# Backbone options
# ---------------------------------------------------------------------------- #
_C.MODEL.BACKBONE = CN()
# A name registered in d2lite.modeling.BACKBONE_REGISTRY.
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Freeze the first stages: 1 = stem, 2 = stem + res2, ...
_C.MODEL.BACKBONE.FREEZE_AT = 2

# ---------------------------------------------------------------------------- #
# FPN options
# ---------------------------------------------------------------------------- #
_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
# "" (no norm), "GN", ...
_C.MODEL.FPN.NORM = ""
# "sum" or "avg".
_C.MODEL.FPN.FUSE_TYPE = "sum"

# ---------------------------------------------------------------------------- #
# Anchor generator options
# ---------------------------------------------------------------------------- #
_C.MODEL.ANCHOR_GENERATOR = CN()
# A name registered in d2lite.modeling.ANCHOR_GENERATOR_REGISTRY.
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
# list[list[float]]: SIZES[i] are the sizes (sqrt of area, pixels) of level i; one list = all levels.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
# list[list[float]]: height / width ratios, per level or one list for all levels.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Offset of the first anchor center from the image corner, in units of the stride, in [0, 1).
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# ---------------------------------------------------------------------------- #
# RetinaNet Head
# ---------------------------------------------------------------------------- #
_C.MODEL.RETINANET = CN()
# Number of foreground classes.
_C.MODEL.RETINANET.NUM_CLASSES = 80
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
# Convolutions in the cls and bbox towers (not counting the output convs).
_C.MODEL.RETINANET.NUM_CONVS = 4
# IoU [bg, fg] thresholds and labels for anchors: < bg negative (0), [bg, fg) ignored (-1), >= fg positive (1).
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
# Initial foreground probability, sets the bias of the classification output.
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Inference: score threshold, candidates per level before NMS, NMS IoU threshold.
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
# Weights on (dx, dy, dw, dh) of the box regression targets.
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
# "smooth_l1", "giou", "diou" or "ciou".
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
# Norm of the (shared) head convs: "" or "GN" (BN variants are shared across levels).
_C.MODEL.RETINANET.NORM = ""

# ---------------------------------------------------------------------------- #
# ResNe[X]t options
# ---------------------------------------------------------------------------- #
_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
# 1 = ResNet; > 1 = ResNeXt.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "GN", "SyncBN", "BN".
_C.MODEL.RESNETS.NORM = "FrozenBN"
# Baseline width of each group.
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Stride 2 on the 1x1 conv (True for the MSRA ResNets, False for torchvision ones).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Dilation of res5 (1 or 2).
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of res2 (64 for R18/R34) and of the stem.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolutions: d2lite has none, so these must keep their defaults.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# ---------------------------------------------------------------------------- #
# Solver
# ---------------------------------------------------------------------------- #
_C.SOLVER = CN()
# "WarmupMultiStepLR", "WarmupCosineLR" or "WarmupStepWithFixedGammaLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# The end lr, only used by WarmupCosineLR.
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay of the parameters of normalization layers.
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
# Iterations at which the lr is multiplied by GAMMA.
_C.SOLVER.STEPS = (30000,)
# Number of decays in the WarmupStepWithFixedGammaLR schedule.
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
# Whether the schedule after warmup is rescaled to the remaining iterations.
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Images per iteration over all processes.
_C.SOLVER.IMS_PER_BATCH = 16
# detectron2's DefaultTrainer rescales batch/lr/iterations for this world size; d2lite does not (keep 0).
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None  # None means following WEIGHT_DECAY
# Gradient clipping, per parameter as in detectron2 ("value" or "norm").
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# Automatic mixed precision.
_C.SOLVER.AMP = CN({"ENABLED": False})

# ---------------------------------------------------------------------------- #
# Specific test options
# ---------------------------------------------------------------------------- #
_C.TEST = CN()
# For end-to-end tests to verify the expected accuracy: [[task, metric, value, tolerance], ...].
_C.TEST.EXPECTED_RESULTS = []
# Evaluate every this many iterations (0: only after training).
_C.TEST.EVAL_PERIOD = 0
# Maximum number of detections per image.
_C.TEST.DETECTIONS_PER_IMAGE = 100

# ---------------------------------------------------------------------------- #
# Misc options
# ---------------------------------------------------------------------------- #
_C.OUTPUT_DIR = "./output"
# Negative: a random seed each run.
_C.SEED = -1
# Draw training images with ground truth and predictions every this many iterations (0: never).
_C.VIS_PERIOD = 0

OUT_OF_SCOPE_KEYS = (
    # proposals, two-stage detectors, masks, keypoints, semantic/panoptic segmentation
    "MODEL.LOAD_PROPOSALS",
    "MODEL.MASK_ON",
    "MODEL.KEYPOINT_ON",
    "MODEL.PROPOSAL_GENERATOR",
    "MODEL.RPN",
    "MODEL.ROI_HEADS",
    "MODEL.ROI_BOX_HEAD",
    "MODEL.ROI_BOX_CASCADE_HEAD",
    "MODEL.ROI_MASK_HEAD",
    "MODEL.ROI_KEYPOINT_HEAD",
    "MODEL.SEM_SEG_HEAD",
    "MODEL.PANOPTIC_FPN",
    "INPUT.MASK_FORMAT",
    "DATASETS.PROPOSAL_FILES_TRAIN",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN",
    "DATASETS.PROPOSAL_FILES_TEST",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST",
    "TEST.KEYPOINT_OKS_SIGMAS",
    # rotated boxes
    "MODEL.ANCHOR_GENERATOR.ANGLES",
    # test-time augmentation and precise BN (detectron2's DefaultTrainer features)
    "TEST.AUG",
    "TEST.PRECISE_BN",
    # process-wide settings and hacks
    "CUDNN_BENCHMARK",
    "FLOAT32_PRECISION",
    "GLOBAL",
)
"""detectron2 config keys (and key prefixes) outside d2lite's scope: accepted in YAML
files and ``merge_from_list``, then dropped with one warning listing them."""
