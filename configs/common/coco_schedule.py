"""COCO schedules: 1x = 90k iterations at batch 16, with 1000 linear warmup iterations."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2lite.config import LazyCall as L
from d2lite.solver import WarmupParamScheduler


def default_X_scheduler(num_X: float):
    """Return the LR multiplier for an ``num_X``-times 90k-iteration schedule.

    The lr drops 10x twice: at 2/3 and 8/9 of training for 1x/2x, and
    60k/20k iterations before the end for longer schedules (as detectron2).
    """
    total_steps_16bs = int(num_X * 90000)
    if num_X <= 2:
        # The multiplier is evaluated at iter / max_iter, so these milestones
        # are scale-invariant: the same as [6, 8, 9].
        milestones = [60000, 80000, 90000]
    else:
        milestones = [total_steps_16bs - 60000, total_steps_16bs - 20000, total_steps_16bs]
    scheduler = L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=milestones)
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=1000 / total_steps_16bs,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
