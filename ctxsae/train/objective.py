"""The training objective, composed from the ``loss`` config group.

    loss = mse * |x - x_hat|^2  +  sparsity(step) * sae.sparsity_penalty  +  auxk * sae.auxiliary_loss

Every term is a per-position cost averaged over the positions the batch's ``mask_BT`` keeps
(the attention-sink position is masked out by default). Squared errors are summed over d_in, so
with activations normalised to E|x|^2 = d_in the coefficients match the usual conventions
(Anthropic's lambda ~ 5 for the norm-weighted L1; Gao et al.'s 1/32 for AuxK).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ctxsae.data.windows import TokenLabels
from ctxsae.models.base import SAE, SAEOutput


class Windows(NamedTuple):
    """A batch of whole windows. Tokens stay in order; documents are marked, never mixed."""

    x_BTD: Tensor  # normalised activations
    tokens_BT: Tensor  # token ids (or -1 where there is no text, e.g. synthetic data)
    doc_start_BT: Tensor  # bool: a new document starts here (always True at t = 0)
    mask_BT: Tensor  # bool: position counts in loss and metrics
    labels: TokenLabels | None = None  # per-token region labels [B, T] (language, block kind, block), if the text has them

    def to(self, device) -> Windows:
        """The batch on ``device``, labels included."""
        tensors = (t.to(device) for t in (self.x_BTD, self.tokens_BT, self.doc_start_BT, self.mask_BT))
        return Windows(*tensors, None if self.labels is None else self.labels.to(device))


@dataclass
class LossConfig:
    mse: float = 1.0
    sparsity: float = 0.0  # coefficient of sae.sparsity_penalty (L1 for relu, L0 for jumprelu)
    sparsity_warmup_steps: int = 0  # linear ramp of the sparsity coefficient from 0
    auxk: float = 0.0  # coefficient of sae.auxiliary_loss (AuxK against dead latents)
    dead_after_tokens: int = 1_000_000  # a latent silent for this many tokens counts as dead


def sparsity_coefficient(cfg: LossConfig, step: int) -> float:
    if cfg.sparsity_warmup_steps <= 0:
        return cfg.sparsity
    return cfg.sparsity * min(1.0, (step + 1) / cfg.sparsity_warmup_steps)


def masked_mean(value_BT: Tensor, mask_BT: Tensor) -> Tensor:
    return (value_BT * mask_BT).sum() / mask_BT.sum().clamp_min(1)


def compute_loss(
    sae: SAE, batch: Windows, cfg: LossConfig, step: int, dead_F: Tensor | None = None
) -> tuple[Tensor, SAEOutput, dict[str, Tensor]]:
    """One forward pass: the scalar loss, the SAE output, and detached per-term figures to log."""
    x, mask = batch.x_BTD, batch.mask_BT
    out = sae(x, batch.doc_start_BT)
    sq_err_BT = (out.reconstruction - x).pow(2).sum(-1)
    terms = {"mse": masked_mean(sq_err_BT, mask)}
    coefs = {"mse": cfg.mse}
    if cfg.sparsity:
        terms["sparsity"] = masked_mean(sae.sparsity_penalty(out), mask)
        coefs["sparsity"] = sparsity_coefficient(cfg, step)
    if cfg.auxk and dead_F is not None and bool(dead_F.any()):
        terms["auxk"] = masked_mean(sae.auxiliary_loss(x, out, dead_F), mask)
        coefs["auxk"] = cfg.auxk
    loss = sum(coefs[k] * v for k, v in terms.items())
    logs = {f"loss/{k}": v.detach() for k, v in terms.items()}
    logs["loss/total"] = loss.detach()
    if "sparsity" in coefs:
        logs["coef/sparsity"] = torch.tensor(coefs["sparsity"])
    return loss, out, logs
