"""PipelineSwitchHook: mmdetection's ``PipelineSwitchHook`` plus the per-epoch evaluation
of ``dynamic_intervals``, for iteration-based d2lite training.

Declare it in the config (``train.hooks``)::

    train.hooks = [
        L(PipelineSwitchHook)(switch_iter=280 * 459, loader="dataloader.train_stage2", eval_period=459)
    ]
"""

import logging
from typing import Any, Callable, Dict, Iterable, Optional, Union

from omegaconf import OmegaConf

from d2lite.engine import HookBase
from d2lite.engine.hooks import EvalHook
from d2lite.engine.lazy_train import build_train_loader, do_test
from d2lite.utils import comm
from d2lite.utils.logger import setup_logger

__all__ = ["PipelineSwitchHook"]

logger = logging.getLogger(__name__)


class PipelineSwitchHook(HookBase):
    """Replace the training data loader by the stage-2 one before iteration ``switch_iter``.

    The switch rebuilds the loader (``trainer.reset_data_loader``): the stage-1 loader
    and its worker processes (with their Mosaic/MixUp caches) are dropped and new
    workers start with the stage-2 pipeline, so every batch from ``switch_iter`` on is a
    stage-2 batch (signalling live workers would still deliver their prefetched stage-1
    batches). The new loader has a new sampler, which starts its shuffled order afresh.

    In a run of the training tool it also sets up the ``rtmdet`` logger (console and
    ``train.output_dir/log.txt``, as d2lite's), so the switch is in the log.

    Nothing is checkpointed: the stage follows from the iteration, so a run resumed at
    or after ``switch_iter`` switches before its first iteration.

    From the switch on, the hook also evaluates every ``eval_period`` iterations
    (mmdetection's ``dynamic_intervals``: every epoch in the last 20 of RTMDet's 300),
    except at iterations where the regular evaluation (``train.eval_period``, and the
    end of training) runs anyway.

    Args:
        switch_iter: first iteration trained with the stage-2 pipeline. RTMDet COCO:
            280 epochs x 459 iterations (mmdetection switches before epoch 280, 0-based).
        loader: the stage-2 training loader: a dotted key of the trainer's config
            (``trainer.cfg``, set by d2lite's LazyConfig training), e.g.
            ``"dataloader.train_stage2"``, built with the training tool's loader builder
            (TensorBoard images of ``train.vis_period`` included); or a function with no
            arguments that returns the loader (for trainers built in code).
        eval_period: evaluate every ``eval_period`` iterations (counted from iteration 0)
            once switched; 0 turns this off. Defaults to 0.
        eval_function: what to run for these evaluations (returns a nested metrics
            dict). Defaults to the training tool's evaluation (``do_test`` on
            ``dataloader.test``, with the EMA weights when ``train.ema.use_for_eval``).
    """

    def __init__(
        self,
        switch_iter: int,
        loader: Union[str, Callable[[], Iterable]] = "dataloader.train_stage2",
        eval_period: int = 0,
        eval_function: Optional[Callable[[], Dict[str, Any]]] = None,
    ):
        if not isinstance(switch_iter, int) or switch_iter < 0:
            raise ValueError(f"PipelineSwitchHook: switch_iter must be an int >= 0, got {switch_iter!r}.")
        if not (isinstance(loader, str) or callable(loader)):
            raise TypeError(f"PipelineSwitchHook: loader must be a config key or a function, got {loader!r}.")
        if eval_period < 0:
            raise ValueError(f"PipelineSwitchHook: eval_period must be >= 0, got {eval_period}.")
        self.switch_iter = switch_iter
        self.loader = loader
        self.eval_period = eval_period
        self.eval_function = eval_function
        self.switched = False
        self._evaluator: Optional[EvalHook] = None

    # ------------------------------------------------------------------ helpers
    def _config(self) -> Any:
        cfg = getattr(self.trainer, "cfg", None)
        if cfg is None:
            raise RuntimeError(
                f"PipelineSwitchHook: loader={self.loader!r} names a config key, but the trainer has no "
                "`cfg` (d2lite's LazyConfig training sets it); pass a loader-building function instead."
            )
        return cfg

    def _loader_config(self) -> Any:
        node = OmegaConf.select(self._config(), self.loader, default=None)
        if node is None:
            raise KeyError(
                f"PipelineSwitchHook: the config has no `{self.loader}` (the stage-2 training loader); "
                "define it, e.g. as a copy of dataloader.train with the stage-2 augmentations."
            )
        return node

    def build_loader(self) -> Iterable:
        """The stage-2 training loader."""
        if callable(self.loader):
            return self.loader()
        return build_train_loader(self._config(), loader_cfg=self._loader_config())

    def _default_eval_function(self) -> Dict[str, Any]:
        cfg = self._config()
        ema = None
        ema_cfg = cfg.train.get("ema", None) or {}
        checkpointer = getattr(self.trainer, "checkpointer", None)
        if ema_cfg.get("enabled", False) and ema_cfg.get("use_for_eval", True) and checkpointer is not None:
            ema = checkpointer.checkpointables.get("ema", None)
        return do_test(cfg, self.trainer.model, ema)

    def _regular_eval_period(self) -> int:
        cfg = getattr(self.trainer, "cfg", None)
        if cfg is None:
            return 0
        return int(cfg.train.get("eval_period", 0) or 0)

    # -------------------------------------------------------------------- hooks
    def before_train(self) -> None:
        cfg = getattr(self.trainer, "cfg", None)
        if cfg is not None:  # the training tool set up d2lite's logger; the project's goes to the same places
            setup_logger(cfg.train.get("output_dir", None), distributed_rank=comm.get_rank(), name="rtmdet")
        if isinstance(self.loader, str):
            self._loader_config()  # fail at the start, not at the switch, on a wrong key
        if self.eval_period > 0:
            fn = self.eval_function if self.eval_function is not None else self._default_eval_function
            self._evaluator = EvalHook(self.eval_period, fn, eval_after_train=False)
            self._evaluator.trainer = self.trainer

    def before_step(self) -> None:
        if self.switched or self.trainer.iter < self.switch_iter:
            return
        source = self.loader if isinstance(self.loader, str) else "loader function"
        logger.info(
            f"PipelineSwitchHook: switching the training data pipeline to stage 2 ({source}) "
            f"at iteration {self.trainer.iter}"
        )
        self.trainer.reset_data_loader(self.build_loader)
        self.switched = True

    def after_step(self) -> None:
        if not self.switched or self._evaluator is None:
            return
        next_iter = self.trainer.iter + 1
        regular = self._regular_eval_period()
        if next_iter == self.trainer.max_iter or (regular > 0 and next_iter % regular == 0):
            return  # EvalHook evaluates here
        self._evaluator.after_step()
