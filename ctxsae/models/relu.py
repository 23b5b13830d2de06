"""ReLU SAE, trained the way Anthropic's April-2024 update (Conerly et al.) describes.

    z     = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = z W_dec + b_dec
    cost  = sum_i z_i * ||W_dec_i||        (per position; the loss's ``sparsity`` coefficient ~ 5)

The decoder is *not* kept at unit norm. Weighting each code's L1 by its decoder row norm makes the
penalty invariant to moving scale between z_i and W_dec_i, which is all the unit-norm constraint
was for, and leaves the optimiser free to use the row norms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ctxsae.models.base import SAE, SAEConfig, SAEOutput
from ctxsae.ranges import above


@dataclass
class ReLUConfig(SAEConfig):
    _target_: str = "ctxsae.models.relu.ReLUSAE"
    decoder_init_norm: float = field(default=0.1, metadata=above(0))  # initial L2 norm of every decoder row (and encoder column)


class ReLUSAE(SAE):
    architecture = "relu"
    config_class = ReLUConfig
    cfg: ReLUConfig
    unit_norm_decoder = False

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        # Anthropic start rows short (0.05-1 worked for them; they use 0.1) with W_enc = W_dec^T:
        # early codes are then small, so the first steps learn directions rather than fight the L1.
        with torch.no_grad():
            self.W_dec.mul_(cfg.decoder_init_norm)
            self.W_enc.copy_(self.W_dec.T)

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        pre_BTF = self.pre_acts(x_BTD)
        codes_BTF = pre_BTF.relu()
        return SAEOutput(codes_BTF, codes_BTF, self.decode(codes_BTF), pre_BTF, {})

    def sparsity_penalty(self, out: SAEOutput) -> Tensor:
        # Codes are non-negative, so |z| = z and the weighted L1 is one matrix-vector product.
        return out.codes @ self.W_dec.norm(dim=1)
