"""Region SAE: a TopK SAE plus a few slow latents for what is true of the whole region.

Why. The map (docs/results.md) found two things about SmolLM2's residual stream on real text.
Holding TopK's own codes saves little: at every layer 92-97% of TopK's codes at t are new or
changed by more than 30% from t - 1 (the persistence oracle), which is about what the recurrent SAE
reached. Yet the document's causal running mean explains 4% of the activation variance at layer 16
and 10-14% at layer 24. So the region component exists but is spread thinly over many token
latents rather than carried by a few; this variant gives it latents of its own.

The last ``d_region`` latents of the dictionary (R) are *region latents*; the others (the token
latents, T) are TopK's. A region latent reads the document's running mean instead of the token,
and its value is held until its target has moved:

    m_t     = mean(x_s : s <= t, s in t's document)                      the causal region mean
    rho_t   = ReLU((m_t - b_dec) W_enc[:, R] + b_enc[R])                 region targets
    r_t     = rho_t     where |rho_t - r_{t-1}| > resend_above * r_{t-1}  (sent)
              r_{t-1}   elsewhere                                         (held; r = 0 before a document)
    z_t     = TopK_k(ReLU((x_t - r_t W_dec[R] - b_dec) W_enc[:, T] + b_enc[T]))   what is new at t
    x_hat_t = z_t W_dec[T] + r_t W_dec[R] + b_dec

The novel codes are the k token codes z_t and, for each region latent sent at t, its change
r_t - r_{t-1}: novel L0 = k + sends per position, so every send is paid for. The effective codes are
z_t and r_t. ``resend_above`` (0.3) is the persistence oracle's "changed by more than 30%", so a
region latent is re-sent exactly when the oracle would count it as changed; a stop (rho falls to 0)
is a change too.

The contract. r_t is a sum of the region codes sent since the document started, and z_t is coded,
so the decoder reads nothing that was not sent. Everything is causal (m_t reads s <= t only) and
resets at a document start. With ``d_region = 0`` the model is TopK, output for output. The region
pathway is small and readable: d_region encoder columns and decoder rows, one threshold.

Gradients. Which targets are sent is decided without a graph; r_t is then the sent target
rho_{s(t)} gathered from the position s(t) it was sent at, so the reconstruction error at every
position it is held for trains the region encoder. The token encoder reads the region's
reconstruction as a given input (detached): the region latents learn to reconstruct, the token
latents learn what is left.

What it found (README, "The map"). On SmolLM2 at layers 16 and 24 the region latents became region
features (language is read off the effective codes far better than off TopK's) and carried ~9% of
the reconstruction's energy, but the token latents stopped carrying that part instead of coding
anything new: FVU, CE and novel L0 equal TopK's at every k. The running mean of TopK's own residual
explains under 1% of the variance there: the region offset was already in the token latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ctxsae.errors import UserError
from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.recurrent import RecurrentSAE
from ctxsae.models.sparse_encoder import dense_pre_acts, encode_topk, folded_bias, one_thread_on_cpu
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_sparse
from ctxsae.ranges import at_least, between


@dataclass
class RegionConfig(TopKConfig):
    _target_: str = "ctxsae.models.region.RegionSAE"
    d_region: int = field(default=16, metadata=between(0, "d_sae"))  # region latents (the dictionary's last d_region); 0: the model is TopK
    resend_above: float = field(default=0.3, metadata=at_least(0))  # a held region value is re-sent once its target moved by more than this fraction of it


def running_mean(x_BTD: Tensor, doc_start_BT: Tensor) -> Tensor:
    """m [B, T, D]: the mean of x over the positions s <= t of t's document (a document starts at
    every True of doc_start_BT and at t = 0).

    The sum restarts at each document start rather than being one cumulative sum minus its value
    there: that difference would carry the rounding of the earlier document into the next one,
    and document resets are tested bit for bit.
    """
    T = x_BTD.shape[1]
    sum_BTD = torch.empty_like(x_BTD)
    sum_BD = x_BTD[:, 0]
    with one_thread_on_cpu(x_BTD.device):
        sum_BTD[:, 0] = sum_BD
        for t in range(1, T):
            sum_BD = torch.where(doc_start_BT[:, t, None], x_BTD[:, t], sum_BD + x_BTD[:, t])
            sum_BTD[:, t] = sum_BD
    positions_T = torch.arange(T, device=x_BTD.device)
    start_BT = torch.where(doc_start_BT, positions_T, 0).cummax(dim=1).values  # where t's document starts
    return sum_BTD / (positions_T - start_BT + 1)[..., None]


@torch.no_grad()
def sent_at(rho_TBR: Tensor, doc_start_TB: Tensor, resend_above: float) -> Tensor:
    """s(t) [T, B, R]: the position whose target r_t holds (t itself where it is sent), -1 while nothing is.

    The hold rule of the module docstring, one position at a time (its [B, R] operations are tiny).
    """
    T, B, R = rho_TBR.shape
    source_TBR = torch.empty(T, B, R, dtype=torch.long, device=rho_TBR.device)
    r_BR, source_BR = rho_TBR.new_zeros(B, R), torch.full((B, R), -1, device=rho_TBR.device)
    with one_thread_on_cpu(rho_TBR.device):
        for t in range(T):
            new_doc_B1 = doc_start_TB[t, :, None]
            r_BR = r_BR.masked_fill(new_doc_B1, 0.0)
            send_BR = (rho_TBR[t] - r_BR).abs() > resend_above * r_BR
            r_BR = torch.where(send_BR, rho_TBR[t], r_BR)
            source_BR = torch.where(send_BR, t, source_BR.masked_fill(new_doc_B1, -1))
            source_TBR[t] = source_BR
    return source_TBR


class RegionSAE(TopKSAE, ContextualSAE):
    """k token codes per position plus the region latents' sends (the module docstring)."""

    architecture = "region"
    config_class = RegionConfig
    cfg: RegionConfig

    def __init__(self, cfg: RegionConfig):
        if cfg.d_sae - cfg.d_region < cfg.k:
            raise UserError(f"model.d_sae - model.d_region = {cfg.d_sae - cfg.d_region} token latents, fewer than model.k = {cfg.k}:"
                            " lower model.d_region or model.k")
        super().__init__(cfg)

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "retention" [F], 1 for the region latents (they hold exactly) and 0 for the token latents,
        so that ``attribute`` reads them as the recurrent SAE's."""
        B, T, _ = x_BTD.shape
        n_token = self.d_sae - self.cfg.d_region
        region_pre_BTR = running_mean(x_BTD, doc_start_BT) @ self.W_enc[:, n_token:] + folded_bias(self)[n_token:]
        rho_BTR = region_pre_BTR.relu()
        source_BTR = sent_at(rho_BTR.detach().transpose(0, 1), doc_start_BT.T, self.cfg.resend_above).transpose(0, 1)
        # r_t = rho at the position it was sent from (a zero in front stands for "nothing sent yet").
        r_BTR = torch.cat([rho_BTR.new_zeros(B, 1, self.cfg.d_region), rho_BTR], dim=1).gather(1, source_BTR + 1)
        r_prev_BTR = torch.cat([r_BTR.new_zeros(B, 1, self.cfg.d_region), r_BTR[:, :-1]], dim=1).masked_fill(doc_start_BT[..., None], 0.0)
        sent_BTR = source_BTR == torch.arange(T, device=x_BTD.device)[:, None]
        region_BTD = r_BTR @ self.W_dec[n_token:]

        residual_BTD = x_BTD - region_BTD.detach()
        pre_BTF, b_F = dense_pre_acts(self, residual_BTD)
        pre_BTF[..., n_token:] = float("-inf")  # the k token codes are chosen among the token latents only
        vals_BTK, idx_BTK, pre_BTF = encode_topk(self, residual_BTD, self.cfg.k, (pre_BTF, b_F))
        token_codes_BTF = vals_BTK.new_zeros(B, T, n_token).scatter(-1, idx_BTK, vals_BTK)
        token_BTD = decode_sparse(self.W_dec, idx_BTK.flatten(0, 1), vals_BTK.flatten(0, 1)).view_as(x_BTD)

        region_codes_BTR = torch.where(sent_BTR, r_BTR - r_prev_BTR, 0.0)
        retention_F = torch.zeros(self.d_sae, device=x_BTD.device)
        retention_F[n_token:] = 1.0
        return SAEOutput(
            torch.cat([token_codes_BTF, region_codes_BTR], dim=-1),
            torch.cat([token_codes_BTF, r_BTR], dim=-1),
            token_BTD + region_BTD + self.b_dec,
            torch.cat([pre_BTF[..., :n_token], region_pre_BTR], dim=-1),
            {"retention": retention_F},
        )

    # -- reading the context pathway ----------------------------------------------------------------
    attribute = staticmethod(RecurrentSAE.attribute)

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """How much the region latents do, over all positions of ``out``.

        ``context_energy_share``: the region latents' part of the reconstruction (r W_dec).
        """
        n_token = self.d_sae - self.cfg.d_region
        z_NR, r_NR = out.codes.flatten(0, 1)[:, n_token:], out.effective_codes.flatten(0, 1)[:, n_token:]
        return {
            "context_params": float(self.cfg.d_region * (2 * self.d_in + 1)),
            "region_latents": float(self.cfg.d_region),
            "region_sends_per_position": (z_NR != 0).sum().item() / len(z_NR),
            "region_active_per_position": (r_NR != 0).sum().item() / len(r_NR),
            "context_energy_share": context_energy_share(r_NR @ self.W_dec[n_token:], out.effective_codes.flatten(0, 1) @ self.W_dec),
        }
