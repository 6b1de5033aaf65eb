"""Checkpointing (DetectionCheckpointer) and weight-name conversion for model-zoo files."""

from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

from .c2_model_loading import align_and_update_state_dicts
from .compatibility import CheckpointError, IncompatibleCheckpointError, check_optimizer_state
from .detection_checkpoint import DetectionCheckpointer

__all__ = [
    "Checkpointer",
    "PeriodicCheckpointer",
    "DetectionCheckpointer",
    "align_and_update_state_dicts",
    "CheckpointError",
    "IncompatibleCheckpointError",
    "check_optimizer_state",
]
