"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training: TopK over the whole batch instead of per position. Of the n_tokens * d_sae ReLU'd
pre-activations the k * n_tokens largest are kept, so the *mean* L0 is k while each position
gets as many latents as it needs (easy tokens few, dense ones many).

Inference: a batch-level choice would make a token's code depend on its batch neighbours, so it
is replaced by one global JumpReLU-style threshold,

    z = pre * (pre > threshold),

where ``threshold`` is a running average (EMA) of the smallest activation BatchTopK kept in each
training batch. Everything else (decoder, AuxK against dead latents) is the TopK SAE's.

Every position of the batch competes for the budget, including ones the loss masks out (the
forward pass does not see the mask): feed it windows without attention-sink positions, or their
large norms will take a share of the k * n_tokens slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ctxsae.models.base import SAEOutput
from ctxsae.models.sparse_encoder import dense_pre_acts, select
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_sparse
from ctxsae.ranges import between


@dataclass
class BatchTopKConfig(TopKConfig):
    _target_: str = "ctxsae.models.batchtopk.BatchTopKSAE"
    threshold_momentum: float = field(default=0.01, metadata=between(0, 1, lo_open=True))  # EMA weight of each training batch's minimum kept activation


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        # 0 = not yet estimated: inference is then a plain ReLU, and the first batch sets it.
        self.register_buffer("threshold", torch.zeros(()))

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        pre_BTF, b_F = dense_pre_acts(self, x_BTD)
        pre_flat = pre_BTF.reshape(-1)
        n_tokens = x_BTD.shape[0] * x_BTD.shape[1]
        if self.training:
            # Sorted, because decode_sparse wants each position's entries together.
            idx = pre_flat.topk(self.cfg.k * n_tokens, sorted=False).indices.sort().values
        else:
            idx = (pre_flat > self.threshold).nonzero().squeeze(1)
        vals, pre_BTF = select(self, x_BTD, b_F, pre_BTF, idx)  # the encoder's gradient from these entries only
        if self.training:
            vals = vals.relu()
            self._update_threshold(vals)
        pos, latent = idx // self.d_sae, idx % self.d_sae
        codes_BTF = torch.zeros_like(pre_flat).scatter(0, idx, vals).view_as(pre_BTF)
        offsets = torch.searchsorted(pos, torch.arange(n_tokens, device=pos.device))
        recon_BTD = decode_sparse(self.W_dec, latent, vals, offsets).view_as(x_BTD) + self.b_dec
        return SAEOutput(codes_BTF, codes_BTF, recon_BTD, pre_BTF, {})

    @torch.no_grad()
    def _update_threshold(self, kept_vals: Tensor) -> None:
        kept_min = torch.where(kept_vals > 0, kept_vals, torch.inf).min()
        if not torch.isfinite(kept_min):  # nothing fired in this batch: no information
            return
        unset = self.threshold == 0
        self.threshold.copy_(torch.where(unset, kept_min, self.threshold.lerp(kept_min, self.cfg.threshold_momentum)))
