"""What a contextual SAE's context pathway does, over a whole evaluation set.

The figures are the SAE's own (``ContextualSAE.context_stats``: retention, carried share, context
share of the reconstruction energy, ...), computed per batch and averaged weighted by positions.
"""

from __future__ import annotations

from ctxsae.cache.dataset import Windows
from ctxsae.models.base import ContextualSAE, SAEOutput


class ContextPathway:
    """Position-weighted mean of ``sae.context_stats(out)`` over the batches."""

    def __init__(self, sae: ContextualSAE):
        self.sae = sae
        self.sums: dict[str, float] = {}
        self.n = 0

    def update(self, batch: Windows, out: SAEOutput) -> None:
        weight = out.codes.shape[0] * out.codes.shape[1]
        for k, v in self.sae.context_stats(out).items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
        self.n += weight

    def compute(self) -> dict[str, float] | None:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else None
