"""PipelineSwitchHook on a SimpleTrainer: the switch iteration, resume after the switch,
evaluation every period once switched, config keys."""

import itertools

import pytest
import torch
from omegaconf import OmegaConf

from d2lite.config import LazyCall as L
from d2lite.engine import SimpleTrainer
from rtmdet.hooks import PipelineSwitchHook


class _StageRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, batch):
        self.seen.append(batch[0])
        return {"loss": (self.w * 0.0).sum()}


class _Loader:
    """An infinite loader of [stage] batches that counts how often it was iterated."""

    def __init__(self, stage):
        self.stage, self.iterated = stage, 0

    def __iter__(self):
        self.iterated += 1
        return itertools.repeat([self.stage])


def _trainer(stage1):
    model = _StageRecorder()
    return SimpleTrainer(model, stage1, torch.optim.SGD(model.parameters(), lr=0.1)), model


def test_switch_at_its_iteration():
    stage1, built = _Loader(1), []

    def build_stage2():
        built.append(_Loader(2))
        return built[-1]

    trainer, model = _trainer(stage1)
    hook = PipelineSwitchHook(switch_iter=6, loader=build_stage2)
    trainer.register_hooks([hook])
    trainer.train(0, 10)
    assert model.seen == [1] * 6 + [2] * 4
    assert len(built) == 1 and built[0].iterated == 1 and hook.switched


def test_resume_after_the_switch_starts_in_stage_2():
    stage1 = _Loader(1)
    trainer, model = _trainer(stage1)
    trainer.register_hooks([PipelineSwitchHook(switch_iter=6, loader=lambda: _Loader(2))])
    trainer.train(8, 10)  # as a resumed run: start_iter = checkpoint iteration + 1
    assert model.seen == [2, 2]
    assert stage1.iterated == 0  # the stage-1 loader never started (no workers, no caches)
    # resumed before the switch: stage 1 first
    trainer, model = _trainer(_Loader(1))
    trainer.register_hooks([PipelineSwitchHook(switch_iter=6, loader=lambda: _Loader(2))])
    trainer.train(4, 8)
    assert model.seen == [1, 1, 2, 2]


def test_evaluates_every_period_after_the_switch():
    evaluated = []
    trainer, _ = _trainer(_Loader(1))

    def eval_fn():
        evaluated.append(trainer.iter + 1)
        return {"bbox": {"AP": float(trainer.iter)}}

    hook = PipelineSwitchHook(switch_iter=4, loader=lambda: _Loader(2), eval_period=2, eval_function=eval_fn)
    trainer.register_hooks([hook])
    trainer.train(0, 10)
    # after iterations 6 and 8 (counted as in EvalHook: (iter + 1) % period == 0), not before the
    # switch, not at the end (the regular EvalHook evaluates there)
    assert evaluated == [6, 8]

    evaluated.clear()
    trainer, _ = _trainer(_Loader(1))
    trainer.cfg = OmegaConf.create({"train": {"eval_period": 4}})  # the regular evaluation runs at 4, 8
    hook = PipelineSwitchHook(switch_iter=4, loader=lambda: _Loader(2), eval_period=2, eval_function=eval_fn)
    trainer.register_hooks([hook])
    trainer.train(0, 10)
    assert evaluated == [6]
    assert trainer.storage.latest()["bbox/AP"][0] == 5.0


def _make_loader(stage):
    return _Loader(stage)


def test_loader_from_a_config_key_and_a_missing_key():
    trainer, model = _trainer(_Loader(1))
    trainer.cfg = OmegaConf.create({"dataloader": {"stage2": L(_make_loader)(stage=2)}, "train": {}})
    trainer.register_hooks([PipelineSwitchHook(switch_iter=1, loader="dataloader.stage2")])
    trainer.train(0, 3)
    assert model.seen == [1, 2, 2]

    trainer, _ = _trainer(_Loader(1))
    trainer.cfg = OmegaConf.create({"dataloader": {}, "train": {}})
    trainer.register_hooks([PipelineSwitchHook(switch_iter=1, loader="dataloader.train_stage2")])
    with pytest.raises(KeyError, match="dataloader.train_stage2"):
        trainer.train(0, 3)

    trainer, _ = _trainer(_Loader(1))  # no cfg on a trainer built in code
    trainer.register_hooks([PipelineSwitchHook(switch_iter=1, loader="dataloader.train_stage2")])
    with pytest.raises(RuntimeError, match="loader-building function"):
        trainer.train(0, 3)
    with pytest.raises(ValueError, match="switch_iter"):
        PipelineSwitchHook(switch_iter=-1)


def test_visualize_data_shows_both_stages(tmp_path):
    """tools/visualize_data.py draws stage-1 (default) and stage-2 (--loader train_stage2) samples."""
    import os
    import sys

    import numpy as np
    from PIL import Image

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.path.insert(0, os.path.join(repo, "tools"))
    try:
        import visualize_data
    finally:
        sys.path.remove(os.path.join(repo, "tools"))
    config = os.path.join(repo, "projects", "RTMDet", "configs", "rtmdet_tiny_shapes_recipe.py")
    for loader, out in (("train", tmp_path / "s1"), ("train_stage2", tmp_path / "s2")):
        args = ["--config-file", config, "--output-dir", str(out), "--num-images", "6", "--loader", loader]
        assert visualize_data.main(args) == 0
        images = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
        assert len(images) == 6 and all(img.shape == (224, 224, 3) for img in images)
