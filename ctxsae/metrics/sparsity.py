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

from ctxsae.models.base import SAEOutput

LOG10_FREQ_EDGES = np.arange(-8.0, 0.01, 0.5)  # 1e-8 .. 1 in half decades


class Sparsity:
    """Streaming per-latent firing counts and per-position L0/L1 sums."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.fires_F = torch.zeros(d_sae, dtype=torch.long)  # novel codes
        self.fires_eff_F = torch.zeros(d_sae, dtype=torch.long)  # effective codes
        self.l0 = self.l0_eff = self.l1 = self.l1_eff = 0.0

    @torch.no_grad()
    def update(self, out: SAEOutput, mask_BT: Tensor) -> None:
        z, a = out.codes[mask_BT], out.effective_codes[mask_BT]
        self.n += len(z)
        self.fires_F += (z != 0).sum(0).cpu()
        self.fires_eff_F += (a != 0).sum(0).cpu()
        self.l0 += (z != 0).sum().item()
        self.l0_eff += (a != 0).sum().item()
        self.l1 += z.abs().sum().item()
        self.l1_eff += a.abs().sum().item()

    def compute(self, dense_threshold: float = 0.1) -> dict:
        n = max(self.n, 1)
        freq, freq_eff = self.fires_F.double() / n, self.fires_eff_F.double() / n
        dead = (self.fires_F == 0) & (self.fires_eff_F == 0)
        return {
            "l0": self.l0 / n,
            "l0_effective": self.l0_eff / n,
            "l1": self.l1 / n,
            "l1_effective": self.l1_eff / n,
            "dead_fraction": dead.double().mean().item(),
            "dense_fraction": (freq > dense_threshold).double().mean().item(),
            "dense_fraction_effective": (freq_eff > dense_threshold).double().mean().item(),
            "n_tokens": self.n,
            "freq_histogram": firing_histogram(freq),
            "freq_histogram_effective": firing_histogram(freq_eff),
        }


def firing_histogram(freq_F: Tensor) -> dict:
    """Latents per log10(frequency) bin (``LOG10_FREQ_EDGES``); ``never`` = latents with frequency 0."""
    fired = freq_F[freq_F > 0].double().log10().numpy()
    counts, _ = np.histogram(np.clip(fired, LOG10_FREQ_EDGES[0], LOG10_FREQ_EDGES[-1]), bins=LOG10_FREQ_EDGES)
    return {"log10_edges": LOG10_FREQ_EDGES.tolist(), "counts": counts.tolist(), "never": int((freq_F == 0).sum())}
