"""Single-process behaviour of d2lite.utils.comm; the multi-process behaviour is
tested in tests/engine/test_launch.py (two gloo processes)."""

import numpy as np
import torch

from d2lite.utils import comm


def test_single_process_defaults():
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1
    assert comm.is_main_process()
    comm.synchronize()  # no-op, must not require an initialized process group


def test_gather_and_all_gather_return_own_data():
    data = {"a": [1, 2], "b": "x"}
    assert comm.all_gather(data) == [data]
    assert comm.gather(data, dst=0) == [data]


def test_reduce_dict_is_identity_for_one_process():
    d = {"loss_a": torch.tensor(1.5), "loss_b": torch.tensor(2.0)}
    out = comm.reduce_dict(d, average=True)
    assert out is d


def test_shared_random_seed_follows_numpy_rng():
    np.random.seed(123)
    expected = np.random.randint(2**31)
    np.random.seed(123)
    seed = comm.shared_random_seed()
    assert seed == expected and isinstance(seed, int)
