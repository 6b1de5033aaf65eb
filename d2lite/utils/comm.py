"""Primitives for multi-process (distributed) training, same names and semantics as
``detectron2.utils.comm``. Every function works without ``torch.distributed`` being
initialized (a single process): it then behaves as world size 1, rank 0.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "reduce_dict",
    "shared_random_seed",
    "create_local_process_group",
    "get_local_process_group",
]

_LOCAL_PROCESS_GROUP: Optional[Any] = None
_LOCAL_SIZE: Optional[int] = None

_MISSING_LOCAL_PG_ERROR = (
    "Local process group is not yet created! Please use d2lite's `launch()` to start "
    "processes and initialize pytorch process group, or start them with torchrun "
    "(which sets LOCAL_RANK / LOCAL_WORLD_SIZE). If you need to start processes in other "
    "ways, please call comm.create_local_process_group(num_workers_per_machine) after "
    "calling torch.distributed.init_process_group()."
)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 if not distributed)."""
    if not _is_dist():
        return 1
    return dist.get_world_size()


def get_rank() -> int:
    """Global rank of this process (0 if not distributed)."""
    if not _is_dist():
        return 0
    return dist.get_rank()


@functools.lru_cache
def create_local_process_group(num_workers_per_machine: int) -> None:
    """
    Create a process group that contains the processes on the same machine, used by
    :func:`get_local_rank` / :func:`get_local_size`. Every process must call it (it is a
    collective). Called by :func:`d2lite.engine.launch`.

    Args:
        num_workers_per_machine: number of processes per machine; the world size must
            be a multiple of it and ranks are laid out machine by machine.
    """
    global _LOCAL_PROCESS_GROUP, _LOCAL_SIZE
    world_size = get_world_size()
    if world_size % num_workers_per_machine != 0:
        raise ValueError(
            f"World size {world_size} is not a multiple of the number of processes per "
            f"machine {num_workers_per_machine}."
        )
    num_machines = world_size // num_workers_per_machine
    machine_rank = get_rank() // num_workers_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        pg = dist.new_group(ranks_on_i)  # collective: every process creates every group
        if i == machine_rank:
            _LOCAL_PROCESS_GROUP = pg
    _LOCAL_SIZE = num_workers_per_machine


def get_local_process_group():
    """Returns: the process group of the processes on this machine."""
    assert _LOCAL_PROCESS_GROUP is not None, _MISSING_LOCAL_PG_ERROR
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """
    Rank of this process among the processes on the same machine (0 if not
    distributed). Uses the local process group created by ``launch``, else the
    ``LOCAL_RANK`` environment variable set by torchrun.
    """
    if not _is_dist():
        return 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    raise AssertionError(_MISSING_LOCAL_PG_ERROR)


def get_local_size() -> int:
    """Number of processes on this machine (1 if not distributed)."""
    if not _is_dist():
        return 1
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    raise AssertionError(_MISSING_LOCAL_PG_ERROR)


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier among all processes; a no-op when not distributed or world size is 1."""
    if not _is_dist():
        return
    if dist.get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        # device_ids avoids a warning and a potential hang with NCCL barriers.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _get_global_gloo_group():
    """A group over all ranks with the gloo backend (object collectives run on CPU);
    the default group itself when it already uses gloo."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data: Any, group: Optional[Any] = None) -> List[Any]:
    """
    Run all_gather on arbitrary picklable data (not necessarily tensors).

    Args:
        data: any picklable object.
        group: a torch process group. Defaults to a gloo group with all ranks.

    Returns:
        list[data]: one entry per rank, ``[data]`` when not distributed.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return [data]
    output: List[Any] = [None for _ in range(world_size)]
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: Optional[Any] = None) -> List[Any]:
    """
    Run gather on arbitrary picklable data (not necessarily tensors).

    Args:
        data: any picklable object.
        dst: destination rank.
        group: a torch process group. Defaults to a gloo group with all ranks.

    Returns:
        list[data]: on rank ``dst``, one entry per rank; an empty list on other ranks.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return [data]
    rank = dist.get_rank(group=group)
    if rank == dst:
        output: List[Any] = [None for _ in range(world_size)]
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """
    Returns:
        int: a random number that is the same across all workers (rank 0's draw from
        ``np.random``). All workers must call this function, otherwise it will deadlock.
    """
    ints = np.random.randint(2**31)
    all_ints = all_gather(ints)
    return int(all_ints[0])


def reduce_dict(input_dict: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """
    Reduce the values in the dictionary from all processes so that process with rank 0
    has the reduced results (other ranks hold partial sums).

    Args:
        input_dict: name -> scalar tensor; every rank must pass the same keys.
        average: whether to average (True) or sum (False).

    Returns:
        a dict with the same keys as input_dict, after reduction.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            # only the main process accumulates, so only divide by world_size there
            values /= world_size
        reduced_dict = {k: v for k, v in zip(names, values)}
    return reduced_dict
