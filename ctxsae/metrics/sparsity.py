"""How sparse the codes are, and how the latents share the work, over a whole evaluation set.

Both codes of the interface are measured: the *novel* codes (what the sparsity objective pays
for) and the *effective* codes (what is active once context is added back; the decoder reads
these). A per-token SAE has the same figures for both. A contextual SAE's sparsity is real when
its novel L0 is low *and* its effective codes stay as sparse and as useful as a per-token SAE's.

* ``l0`` / ``l1``: mean number / summed magnitude of non-zero codes per position.
* dead latents: never non-zero (in either code) on the evaluation set. With a small set this
  over-counts rare latents: it is "dead at this resolution" (1 / tokens).
* dense latents: non-zero at more than ``dense_threshold`` of positions.
* firing-frequency histogram: latents per bin of log10(frequency), fixed edges so that runs can
  be compared; latents that never fire are counted apart.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from ctxsae.cache.dataset import Windows
from ctxsae.models.base import SAEOutput

LOG10_FREQ_EDGES = np.arange(-8.0, 0.01, 0.5)  # 1e-8 .. 1 in half decades


class Sparsity(Metric):
    """Streaming per-latent firing counts and per-position L0/L1 sums (a torchmetrics ``Metric``:
    summed across processes under data-parallel validation)."""

    full_state_update = False

    def __init__(self, d_sae: int, dense_threshold: float = 0.1, sync_on_compute: bool = True):
        super().__init__(sync_on_compute=sync_on_compute)
        self.dense_threshold = dense_threshold
        self.add_state("fires_F", torch.zeros(d_sae, dtype=torch.long), dist_reduce_fx="sum")  # novel codes
        self.add_state("fires_eff_F", torch.zeros(d_sae, dtype=torch.long), dist_reduce_fx="sum")  # effective codes
        for name in ("l0", "l0_eff", "l1", "l1_eff"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: Windows, out: SAEOutput) -> None:
        z, a = out.codes[batch.mask_BT], out.effective_codes[batch.mask_BT]
        self.n += len(z)
        self.fires_F += (z != 0).sum(0)
        self.fires_eff_F += (a != 0).sum(0)
        self.l0 += (z != 0).sum()
        self.l0_eff += (a != 0).sum()
        self.l1 += z.abs().sum().double()
        self.l1_eff += a.abs().sum().double()

    def compute(self) -> dict:
        n = max(self.n.item(), 1)
        fires_F, fires_eff_F = self.fires_F.cpu(), self.fires_eff_F.cpu()
        freq, freq_eff = fires_F.double() / n, fires_eff_F.double() / n
        dead = (fires_F == 0) & (fires_eff_F == 0)
        return {
            "l0": self.l0.item() / n,
            "l0_effective": self.l0_eff.item() / n,
            "l1": self.l1.item() / n,
            "l1_effective": self.l1_eff.item() / n,
            "dead_fraction": dead.double().mean().item(),
            "dense_fraction": (freq > self.dense_threshold).double().mean().item(),
            "dense_fraction_effective": (freq_eff > self.dense_threshold).double().mean().item(),
            "n_tokens": self.n.item(),
            "freq_histogram": firing_histogram(freq),
            "freq_histogram_effective": firing_histogram(freq_eff),
        }

    @property
    def log10_frequency(self) -> torch.Tensor:
        """log10 of the firing frequency of the novel codes of every latent that fires (for histograms)."""
        fires_F = self.fires_F.cpu()
        return (fires_F[fires_F > 0].double() / max(self.n.item(), 1)).log10()


def firing_histogram(freq_F: Tensor) -> dict:
    """Latents per log10(frequency) bin (``LOG10_FREQ_EDGES``); ``never`` = latents with frequency 0."""
    fired = freq_F[freq_F > 0].double().log10().numpy()
    counts, _ = np.histogram(np.clip(fired, LOG10_FREQ_EDGES[0], LOG10_FREQ_EDGES[-1]), bins=LOG10_FREQ_EDGES)
    return {"log10_edges": LOG10_FREQ_EDGES.tolist(), "counts": counts.tolist(), "never": int((freq_F == 0).sum())}
