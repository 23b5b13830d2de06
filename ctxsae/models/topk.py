"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z     = TopK_k(ReLU((x - b_dec) W_enc + b_enc))     keep the k largest, zero the rest
    x_hat = z W_dec + b_dec

Sparsity is structural (L0 = k), so there is no sparsity penalty and no shrinkage. Latents that
stop firing are revived by AuxK: the auxk_k largest pre-activations among the *dead* latents must
reconstruct the error the live latents left behind (loss coefficient ~ 1/32).

Only k of d_sae codes are non-zero, so the decoder gathers k rows per position instead of
multiplying by a mostly-zero matrix (``decode_sparse``), and the encoder's weight gradient is
formed from the same k entries (``sparse_encoder``). The dense codes are still returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ctxsae.models.base import SAE, SAEConfig, SAEOutput
from ctxsae.models.sparse_encoder import SparseDecode, encode_topk


@dataclass
class TopKConfig(SAEConfig):
    _target_: str = "ctxsae.models.topk.TopKSAE"
    k: int = 32  # active latents per position
    auxk_k: int = 512  # dead latents the AuxK loss may use per position


def topk_relu(pre_NF: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Values and indices [..., k] of the k largest ReLU'd pre-activations along the last dim.

    ReLU is monotone, so ReLU-then-TopK equals TopK-then-ReLU, which touches k values instead of
    d_sae. A row with fewer than k positive pre-activations keeps some zeros: its L0 is below k.
    """
    vals, idx = pre_NF.topk(k, dim=-1, sorted=False)
    return vals.relu(), idx


def decode_sparse(W_dec: Tensor, idx: Tensor, vals: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Per position, sum_j vals_j * W_dec[idx_j]: the decoder applied to codes given as (index, value).

    ``idx``/``vals`` are [N, k], or flat with ``offsets`` [N] marking where each position's entries
    start. Costs O(N k d_in) instead of O(N d_sae d_in) for ``codes @ W_dec``, forward and backward
    (``SparseDecode``). Fwd+bwd at 4096 tokens, d_in 576, d_sae 4608, k 32 on 2 CPU threads: the
    decode 5-13x faster than dense, the whole TopK step 2-4x (0.11-0.14 s vs 0.43-0.46 s).
    """
    if offsets is None:
        N, k = idx.shape
        offsets = torch.arange(0, N * k, k, device=idx.device)
        rows = torch.arange(N, device=idx.device).repeat_interleave(k)
        idx, vals = idx.flatten(), vals.flatten()
    else:
        counts = torch.diff(offsets, append=offsets.new_tensor([len(idx)]))
        rows = torch.arange(len(offsets), device=idx.device).repeat_interleave(counts)
    return SparseDecode.apply(W_dec, idx, vals, offsets, rows)


class TopKSAE(SAE):
    unit_norm_decoder = True

    def __init__(self, d_in: int, d_sae: int, k: int = 32, auxk_k: int = 512):
        super().__init__(d_in, d_sae)
        self.k, self.auxk_k = k, auxk_k

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor | None = None) -> SAEOutput:
        vals_BTK, idx_BTK, pre_BTF = encode_topk(self, x_BTD, self.k)
        codes_BTF = torch.zeros_like(pre_BTF).scatter(-1, idx_BTK, vals_BTK)
        recon_ND = decode_sparse(self.W_dec, idx_BTK.flatten(0, 1), vals_BTK.flatten(0, 1))
        recon_BTD = recon_ND.view_as(x_BTD) + self.b_dec
        return SAEOutput(codes_BTF, codes_BTF, recon_BTD, {"pre_acts": pre_BTF})

    def auxiliary_loss(self, x_BTD: Tensor, out: SAEOutput, dead_F: Tensor) -> Tensor:
        """AuxK: |e - e_hat|^2 per position, e = x - x_hat (detached), e_hat from dead latents only.

        e_hat is decoded without b_dec: it models the residual, which the bias already sits in.
        Gao et al. divide by |e|^2; we keep the plain squared error so the term is in the same units
        as the reconstruction loss (the coefficient sets the ratio).
        """
        n_dead = int(dead_F.sum())
        if n_dead == 0:
            return x_BTD.new_zeros(x_BTD.shape[:2])
        e_BTD = (x_BTD - out.reconstruction).detach()
        dead_pre_BTF = out.aux["pre_acts"].masked_fill(~dead_F, float("-inf"))
        vals_BTK, idx_BTK = topk_relu(dead_pre_BTF, min(self.auxk_k, n_dead))
        e_hat_ND = decode_sparse(self.W_dec, idx_BTK.flatten(0, 1), vals_BTK.flatten(0, 1))
        return (e_BTD - e_hat_ND.view_as(e_BTD)).pow(2).sum(-1)
