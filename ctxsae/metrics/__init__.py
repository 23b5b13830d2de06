"""Metrics shared by training, evaluation and the feature browser.

Every figure over a set of windows is an *accumulator*: ``update(batch, out)`` with each batch of
windows and the SAE's output on it, ``compute()`` once at the end (a JSON-able dict). One pass over
the held-out windows feeds any number of them (``accumulate``), so evaluation, the training
summary and the browser read each window once, and per-batch figures are never averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ctxsae.cache.dataset import Windows
from ctxsae.metrics.context import ContextPathway
from ctxsae.metrics.reconstruction import Reconstruction
from ctxsae.metrics.sparsity import Sparsity
from ctxsae.metrics.temporal import Temporal
from ctxsae.models.base import SAE, ContextualSAE, SAEOutput
from ctxsae.ranges import at_least, between


class Accumulator(Protocol):
    def update(self, batch: Windows, out: SAEOutput) -> None:
        """Add one batch: its windows and the SAE's output on them."""

    def compute(self) -> dict:
        """The figures over every batch so far."""


@dataclass
class MetricsConfig:
    """Settings of the held-out accumulators (``held_out_accumulators``)."""

    dense_threshold: float = field(default=0.1, metadata=between(0, 1, lo_open=True))  # a latent firing at more than this share of positions is dense
    region_gap: int = field(default=2, metadata=at_least(0))  # silent positions a region may contain (regions: see ctxsae.metrics.temporal)
    region_min_len: int = field(default=4, metadata=at_least(1))  # shortest span that counts as a region


def held_out_accumulators(sae: SAE, cfg: MetricsConfig, device: torch.device | str = "cpu") -> dict[str, Accumulator]:
    """The figures every held-out pass computes: reconstruction, sparsity, temporal and (contextual SAEs) context.

    A held-out pass runs in one process (also after data-parallel training, on rank 0 alone), so
    the accumulators do not wait for other processes' sums.
    """
    accumulators = {
        "reconstruction": Reconstruction(sae.d_in, sync_on_compute=False).to(device),
        "sparsity": Sparsity(sae.d_sae, cfg.dense_threshold, sync_on_compute=False).to(device),
        "temporal": Temporal(sae.d_sae, cfg.region_gap, cfg.region_min_len),
    }
    if isinstance(sae, ContextualSAE):
        accumulators["context"] = ContextPathway(sae)
    return accumulators


@torch.no_grad()
def accumulate(sae: SAE, batches: Iterable[Windows], accumulators: Mapping[str, Accumulator]) -> dict[str, dict]:
    """One pass: each batch through the SAE once, its output to every accumulator; their figures by name."""
    for batch in batches:
        out = sae(batch.x_BTD, batch.context_start_BT)
        for accumulator in accumulators.values():
            accumulator.update(batch, out)
    return {name: accumulator.compute() for name, accumulator in accumulators.items()}
