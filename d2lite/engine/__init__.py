"""Training engine: trainers, hooks, launcher and defaults for training scripts."""

from . import hooks
from .defaults import create_ddp_model, default_argument_parser, default_setup, default_writers
from .launch import launch
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "HookBase",
    "TrainerBase",
    "SimpleTrainer",
    "AMPTrainer",
    "hooks",
    "launch",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "create_ddp_model",
]
