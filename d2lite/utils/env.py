"""Environment helpers: seeding all random number generators; ``collect_env_info``
(defined in :mod:`d2lite.utils.collect_env`) is re-exported here."""

from __future__ import annotations

import logging
import os
import random
from datetime import datetime
from typing import Optional

import numpy as np
import torch

from .collect_env import collect_env_info

__all__ = ["seed_all_rng", "collect_env_info", "TORCH_VERSION"]

TORCH_VERSION = tuple(int(x) for x in torch.__version__.split(".")[:2])
"""(major, minor) of the installed torch, for version checks."""

logger = logging.getLogger(__name__)


def seed_all_rng(seed: Optional[int] = None) -> int:
    """
    Set the random seed for the RNG in torch, numpy and python.

    Args:
        seed: if None, generate a seed from the pid, the time and os.urandom (so that
            processes started at the same moment differ). Must be in [0, 2**32).

    Returns:
        int: the seed that was used (log it / save it to reproduce the run).
    """
    if seed is None:
        seed = (os.getpid() + int(datetime.now().strftime("%S%f")) + int.from_bytes(os.urandom(2), "big")) % (2**32)
        logger.info(f"Using a generated random seed {seed}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed_all_rng(seed={seed}): the seed must be in [0, 2**32).")
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed
