"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features
with Matryoshka Sparse Autoencoders"; Nabeshima 2024, "Matryoshka Sparse Autoencoders").

The dictionary is read as nested prefixes m_1 < m_2 < ... < d_sae, and every prefix must reconstruct
the input on its own:

    z       = BatchTopK over the whole dictionary (as ctxsae.models.batchtopk)
    x_hat_m = z[:m] W_dec[:m] + b_dec
    L_rec   = |x - x_hat_{d_sae}|^2 + sum_i w_i |x - x_hat_{m_i}|^2

so the first latents are pushed to carry the broad, frequent directions (a general latent cannot
leave its share to a more specific one further down, the absorption that plain SAEs show) and later
ones refine them. The full-dictionary term is the objective's ordinary mse; the proper prefixes reach
it through ``nested_losses``, one term per prefix, so that the objective need not know this class.

Kept from the published formulation (Bussmann et al.'s code, dictionary_learning's and SAELens's
MatryoshkaBatchTopK): one BatchTopK choice over the whole dictionary, not one per prefix; the nested
reconstructions share that code and b_dec; AuxK against dead latents on the *full* reconstruction's
residual; the inference threshold of BatchTopK; unit-norm decoder rows.

Changed, and why:

* Prefix ends are given as shares of d_sae (``prefix_fractions``, as dictionary_learning's and
  T-SAE's ``group_fractions``), not as absolute widths (SAELens's ``matryoshka_widths``): the sweeps
  override d_sae, and a width list would then no longer fit it.
* The loss is a sum with the full dictionary weighted 1 (Bussmann et al.'s equation), the proper
  prefixes by ``prefix_weights``; dictionary_learning averages the weighted terms instead, which
  only rescales the reconstruction part against AuxK.
* Prefixes are fixed, as in Bussmann et al.; Nabeshima samples them anew each batch.

Per-token: the effective codes are the codes, and ``doc_start_BT`` is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ctxsae.errors import UserError
from ctxsae.models.base import SAEOutput
from ctxsae.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from ctxsae.models.topk import decode_sparse


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    _target_: str = "ctxsae.models.matryoshka.MatryoshkaSAE"
    # Ends of the proper prefixes, as shares of d_sae, ascending; the full dictionary is always the last prefix.
    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.25])
    # Weight of each proper prefix's reconstruction loss, relative to the full dictionary's (1).
    prefix_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def __init__(self, cfg: MatryoshkaConfig):
        super().__init__(cfg)
        sizes = [round(f * cfg.d_sae) for f in cfg.prefix_fractions]
        if len(cfg.prefix_weights) != len(sizes):
            raise UserError(f"model.prefix_weights has {len(cfg.prefix_weights)} entries for {len(sizes)} prefix_fractions:"
                            " give one weight per prefix")
        bounds = [0, *sizes, cfg.d_sae]
        if not all(a < b for a, b in zip(bounds, bounds[1:])):
            raise UserError(f"model.prefix_fractions {list(cfg.prefix_fractions)} give prefixes {sizes} of d_sae {cfg.d_sae}:"
                            " they must be distinct, ascending, non-empty and below 1")
        self.prefix_sizes, self.prefix_weights = sizes, [float(w) for w in cfg.prefix_weights]

    def nested_losses(self, x_BTD: Tensor, out: SAEOutput) -> dict[str, Tensor]:
        """``{"prefix_<m>": w_m |x - x_hat_m|^2}`` per position [B, T], for each proper prefix m.

        x_hat_m decodes only the code's entries with latent index < m, gathered once from the sparse
        code (k entries per position on average), so each prefix costs O(N k d_in), not O(N m d_in).
        """
        codes_NF = out.codes.flatten(0, 1)
        pos, latent = codes_NF.nonzero(as_tuple=True)  # position-major, as decode_sparse's offsets need
        vals = codes_NF[pos, latent]
        positions = torch.arange(codes_NF.shape[0], device=pos.device)
        losses = {}
        for size, weight in zip(self.prefix_sizes, self.prefix_weights):
            keep = latent < size
            offsets = torch.searchsorted(pos[keep], positions)
            recon_BTD = decode_sparse(self.W_dec, latent[keep], vals[keep], offsets).view_as(x_BTD) + self.b_dec
            losses[f"prefix_{size}"] = weight * (x_BTD - recon_BTD).pow(2).sum(-1)
        return losses
