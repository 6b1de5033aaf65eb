"""Batch sampler that groups indices of the same group id (e.g. aspect ratio)."""

from typing import Iterator, List

import numpy as np
from torch.utils.data.sampler import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler"]


class GroupedBatchSampler(BatchSampler):
    """Wrap ``sampler`` and yield batches of ``batch_size`` indices that share a group id."""

    def __init__(self, sampler: Sampler, group_ids: List[int], batch_size: int):
        """
        Args:
            sampler: base sampler of indices.
            group_ids: group id (int in [0, K)) of each dataset element.
            batch_size: size of each batch.
        """
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be an instance of torch.utils.data.Sampler, but got sampler={sampler}")
        self.sampler = sampler
        self.group_ids = np.asarray(group_ids)
        if self.group_ids.ndim != 1:
            raise ValueError("group_ids must be 1-D.")
        self.batch_size = batch_size
        groups = np.unique(self.group_ids).tolist()
        self.buffer_per_group = {k: [] for k in groups}

    def __iter__(self) -> Iterator[List[int]]:
        for idx in self.sampler:
            group_id = self.group_ids[idx]
            group_buffer = self.buffer_per_group[group_id]
            group_buffer.append(idx)
            if len(group_buffer) == self.batch_size:
                yield group_buffer[:]
                del group_buffer[:]

    def __len__(self) -> int:
        raise TypeError("len() of GroupedBatchSampler is not well-defined (batches depend on the group order).")
