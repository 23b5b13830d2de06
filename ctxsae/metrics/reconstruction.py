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
from torch import Tensor


class Reconstruction:
    """Streaming sums for the figures above; ``update`` per batch, ``compute`` once."""

    def __init__(self):
        self.n = 0
        self.sq_err = self.sq_norm = self.cos = self.norm_ratio = 0.0
        self.sum_x: Tensor | float = 0.0

    @torch.no_grad()
    def update(self, x_BTD: Tensor, recon_BTD: Tensor, mask_BT: Tensor) -> None:
        x, r = x_BTD[mask_BT].double(), recon_BTD[mask_BT].double()
        x_norm, r_norm = x.norm(dim=-1), r.norm(dim=-1)
        self.n += len(x)
        self.sq_err += (x - r).pow(2).sum().item()
        self.sq_norm += x.pow(2).sum().item()
        self.sum_x = self.sum_x + x.sum(0)
        self.cos += ((x * r).sum(-1) / (x_norm * r_norm).clamp_min(1e-12)).sum().item()
        self.norm_ratio += (r_norm / x_norm.clamp_min(1e-12)).sum().item()

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        variance = self.sq_norm - (torch.as_tensor(self.sum_x).pow(2).sum().item() / n)
        return {
            "fvu": self.sq_err / max(variance, 1e-12),
            "nmse": self.sq_err / max(self.sq_norm, 1e-12),
            "mse": self.sq_err / n,
            "cosine": self.cos / n,
            "norm_ratio": self.norm_ratio / n,
        }
