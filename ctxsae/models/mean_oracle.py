"""Mean oracle: a TopK SAE given the document's running mean of *earlier activations* for free.

Not a design but a bound: its decoder reads x_{<t}, which no code sent, so it breaks the contract
(novel codes carry everything the decoder reads) on purpose. It measures what a perfect region code
could add to a TopK SAE, trained rather than assumed:

    m_t     = mean(x_s : s < t, s in t's document)          the causal region mean, strictly before t
    c_t     = (m_t - b_dec) W_ctx  (0 at a document's first position: nothing before it)
    z_t     = TopK_k(ReLU(pre(x_t - c_t)))                  what the mean does not explain
    x_hat_t = z_t W_dec + c_t + b_dec

W_ctx [d_in, d_in] (0 at init: the model starts as TopK, output for output) is the best linear
read of the mean that training finds, so the oracle gets more than the mean itself. Its novel-L0
ratio at matched FVU is the lowest any context built from the document mean could reach with this
encoder and decoder; read beside the region-variance share, which assumes the mean's explained
variance and the codes' simply add (they do not: TopK's codes already carry much of the mean).

Why this bound. The region-variance share (``ctxsae.metrics.persistence.RegionMeanBound``) put the
document mean at 4% of the variance at layer 16 and 10-14% at layer 24 of SmolLM2, which read off
the TopK front allows an L0 ratio of 0.6 and below 0.5; the region SAE, whose 16 region latents
read the same mean almost for free, gained nothing. Either the room is not there or the region SAE
failed to use it: this model, with the whole mean free, says which.

Effective codes are the novel codes (``is``): the context is not in the dictionary basis, it is the
documented extra term c_t of the reconstruction. The map reports the oracle as a bound, not as an arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.region import running_mean
from ctxsae.models.topk import TopKConfig, TopKSAE


@dataclass
class MeanOracleConfig(TopKConfig):
    _target_: str = "ctxsae.models.mean_oracle.MeanOracleSAE"


def mean_before(x_BTD: Tensor, doc_start_BT: Tensor) -> tuple[Tensor, Tensor]:
    """(m [B, T, D]: the mean of x over t's document strictly before t, 0 where there is none;
    whether there is [B, T])."""
    m_BTD = F.pad(running_mean(x_BTD, doc_start_BT)[:, :-1], (0, 0, 1, 0))
    has_BT = ~doc_start_BT
    return m_BTD * has_BT[..., None], has_BT


class MeanOracleSAE(TopKSAE, ContextualSAE):
    """k novel codes per position, plus the document's earlier mean read through W_ctx for free."""

    architecture = "mean_oracle"
    config_class = MeanOracleConfig
    cfg: MeanOracleConfig

    def __init__(self, cfg: MeanOracleConfig):
        super().__init__(cfg)
        self.W_ctx = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in))

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "context" c [B, T, D], the free term of the reconstruction."""
        m_BTD, has_BT = mean_before(x_BTD, doc_start_BT)
        c_BTD = ((m_BTD - self.b_dec) @ self.W_ctx) * has_BT[..., None]
        pre_BTF, z_BTF, zW_BTD = self.topk_code(x_BTD - c_BTD)
        return SAEOutput(z_BTF, z_BTF, zW_BTD + c_BTD + self.b_dec, pre_BTF, {"context": c_BTD})

    # -- reading the context pathway ----------------------------------------------------------------
    def attribute(self, out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """The effective code is the novel code: all of it is t's (the mean is not in the dictionary basis)."""
        z = out.codes[b, t, i].item()
        return [(t, z)] if z != 0 else []

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """``context_energy_share``: the free term's part of the reconstruction (c against c + z W_dec)."""
        c_ND = out.aux["context"].flatten(0, 1)
        return {
            "context_params": float(self.W_ctx.numel()),
            "context_energy_share": context_energy_share(c_ND, out.reconstruction.flatten(0, 1) - self.b_dec),
            "context_norm_ratio": (c_ND.norm(dim=-1).mean() / (out.reconstruction - self.b_dec).norm(dim=-1).mean().clamp_min(1e-12)).item(),
        }
