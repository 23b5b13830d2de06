"""How well the SAE reconstructs its input, over a whole evaluation set.

    fvu        = sum |x - x_hat|^2 / sum |x - mean(x)|^2     (as ``basic.fvu``, over every batch at once)
    nmse       = sum |x - x_hat|^2 / sum |x|^2               (error relative to the norm, not the variance)
    mse        = mean over positions of |x - x_hat|^2         (normalised units: E|x|^2 = d_in)
    cosine     = mean over positions of cos(x, x_hat)
    norm_ratio = mean over positions of |x_hat| / |x|         (< 1: the SAE shrinks its input)

The figures are accumulated batch by batch in float64, so they are exact over the whole set:
FVU's denominator is the variance about the set's mean, not an average of per-batch variances.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ctxsae.cache.dataset import Windows
from ctxsae.models.base import SAEOutput


class Reconstruction(Metric):
    """Streaming float64 sums for the figures above; ``update`` per batch, ``compute`` once.

    A torchmetrics ``Metric``, so that under data-parallel validation the sums of every process are
    added before the ratios are taken (the split's FVU, not a mean of per-process FVUs).
    """

    full_state_update = False

    def __init__(self, d_in: int, sync_on_compute: bool = True):
        super().__init__(sync_on_compute=sync_on_compute)
        for name in ("sq_err", "sq_norm", "cos", "norm_ratio"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(d_in, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: Windows, out: SAEOutput) -> None:
        x, r = batch.x_BTD[batch.mask_BT].double(), out.reconstruction[batch.mask_BT].double()
        x_norm, r_norm = x.norm(dim=-1), r.norm(dim=-1)
        self.n += len(x)
        self.sq_err += (x - r).pow(2).sum()
        self.sq_norm += x.pow(2).sum()
        self.sum_x += x.sum(0)
        self.cos += ((x * r).sum(-1) / (x_norm * r_norm).clamp_min(1e-12)).sum()
        self.norm_ratio += (r_norm / x_norm.clamp_min(1e-12)).sum()

    def compute(self) -> dict[str, float]:
        n = max(self.n.item(), 1)
        sq_err, sq_norm = self.sq_err.item(), self.sq_norm.item()
        variance = sq_norm - (self.sum_x.pow(2).sum().item() / n)
        return {
            "fvu": sq_err / max(variance, 1e-12),
            "nmse": sq_err / max(sq_norm, 1e-12),
            "mse": sq_err / n,
            "cosine": self.cos.item() / n,
            "norm_ratio": self.norm_ratio.item() / n,
        }

    @property
    def mean_x_D(self) -> torch.Tensor:
        """The mean activation [d_in] over the positions seen (float32), e.g. for mean ablation."""
        return (self.sum_x / max(self.n.item(), 1)).float()
