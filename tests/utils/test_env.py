import os
import random

import numpy as np
import pytest
import torch

from d2lite.utils.collect_env import collect_env_dict, collect_env_info
from d2lite.utils.env import seed_all_rng


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_all_rng_is_reproducible_and_returns_seed():
    assert seed_all_rng(7) == 7
    a = _draw()
    seed_all_rng(7)
    assert _draw() == a
    assert os.environ["PYTHONHASHSEED"] == "7"
    seed_all_rng(8)
    assert _draw() != a


def test_seed_all_rng_generates_a_seed():
    seed = seed_all_rng(None)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    a = _draw()
    seed_all_rng(seed)
    assert _draw() == a


def test_seed_all_rng_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seed_all_rng(-1)


def test_collect_env_lists_versions():
    info = collect_env_dict()
    assert info["PyTorch"].startswith(torch.__version__)
    assert info["numpy"] == np.__version__
    assert info["CUDA available"] == str(torch.cuda.is_available())
    for key in ("Python", "torchvision", "fvcore", "omegaconf", "CPU count"):
        assert key in info
    text = collect_env_info()
    assert "omegaconf" in text and torch.__version__ in text
