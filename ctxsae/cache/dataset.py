"""Batches of whole windows read from the memory-mapped cache.

Windows are shuffled as units; tokens never move across or within windows (the token axis is
the point of this project). Batches are gathered with one sorted read per shard
(``__getitems__``), so peak memory is one batch, however large the cache.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ctxsae.cache.store import ActivationCache
from ctxsae.data.windows import loss_mask
from ctxsae.train.objective import Windows


class CachedWindows(Dataset):
    def __init__(self, cache: ActivationCache, indices: np.ndarray, scale: float, exclude_first: int):
        self.cache, self.indices = cache, np.asarray(indices)
        self.scale, self.exclude_first = scale, exclude_first

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, items: list[int]) -> Windows:
        idx = self.indices[np.asarray(items)]
        x = torch.from_numpy(self.cache.read_x(idx)).float().mul_(self.scale)
        doc_start = torch.from_numpy(self.cache.doc_start[idx])
        mask = loss_mask(doc_start, self.exclude_first)  # drops the attention sink at each window start
        labels = None if self.cache.labels is None else self.cache.labels.select(torch.from_numpy(idx))
        return Windows(x, torch.from_numpy(self.cache.tokens[idx]), doc_start, mask, labels)

    def __getitem__(self, item: int) -> Windows:
        return self.__getitems__([item])


def collate_windows(batch: Windows) -> Windows:
    """``__getitems__`` already returns a batch; the loader must not re-collate it."""
    return batch
