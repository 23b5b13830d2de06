"""Batches of whole windows read from the memory-mapped cache.

Windows are shuffled as units; tokens never move across or within windows (the token axis is
the point of this project). Batches are gathered with one sorted read per shard
(``__getitems__``), so peak memory is one batch, however large the cache.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ctxsae.cache.store import ActivationCache
from ctxsae.data.windows import TokenLabels, context_starts, loss_mask


class Windows(NamedTuple):
    """A batch of whole windows. Tokens stay in order; documents are marked, never mixed."""

    x_BTD: Tensor  # normalised activations
    tokens_BT: Tensor  # token ids (or -1 where there is no text, e.g. synthetic data)
    doc_start_BT: Tensor  # bool: a new document starts here (always True at t = 0)
    mask_BT: Tensor  # bool: position counts in loss and metrics
    labels: TokenLabels | None = None  # per-token region labels [B, T] (language, block kind, block), if the text has them

    @property
    def context_start_BT(self) -> Tensor:
        """Where an SAE's context (re)starts (``context_starts``): what SAEs are called with, not ``doc_start_BT``."""
        return context_starts(self.doc_start_BT, self.mask_BT)

    def to(self, device) -> Windows:
        """The batch on ``device``, labels included."""
        tensors = (t.to(device) for t in (self.x_BTD, self.tokens_BT, self.doc_start_BT, self.mask_BT))
        return Windows(*tensors, None if self.labels is None else self.labels.to(device))


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
