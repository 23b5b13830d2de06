"""The training objective, composed from the ``loss`` config group.

    loss = mse * (|x - x_hat|^2 + sum of sae.nested_losses)  +  sparsity(step) * sae.sparsity_penalty
           +  auxk * sae.auxiliary_loss  +  contrastive * temporal_contrastive(codes of a leading prefix)

Every term but the last is a per-position cost averaged over the positions the batch's ``mask_BT``
keeps (the attention-sink position is masked out by default); the contrastive term is one figure for
the batch, over pairs of kept positions. Squared errors are summed over d_in, so with activations
normalised to E|x|^2 = d_in the coefficients match the usual conventions (Anthropic's lambda ~ 5 for
the norm-weighted L1; Gao et al.'s 1/32 for AuxK).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.errors import UserError
from ctxsae.models.base import SAE, SAEOutput
from ctxsae.ranges import above, at_least, between


@dataclass
class LossConfig:
    mse: float = field(default=1.0, metadata=above(0))
    sparsity: float = field(default=0.0, metadata=at_least(0))  # coefficient of sae.sparsity_penalty (L1 for relu, L0 for jumprelu)
    sparsity_warmup_steps: int = field(default=0, metadata=at_least(0))  # linear ramp of the sparsity coefficient from 0
    auxk: float = field(default=0.0, metadata=at_least(0))  # coefficient of sae.auxiliary_loss (AuxK against dead latents)
    dead_after_tokens: int = field(default=250_000, metadata=at_least(1))  # a latent silent for this many tokens counts as dead
    contrastive: float = field(default=0.0, metadata=at_least(0))  # coefficient of the temporal contrastive term (T-SAE); 0: off
    contrastive_prefix: float = field(default=0.25, metadata=between(0, 1, lo_open=True))  # share of d_sae, the leading latents, whose codes the term compares
    contrastive_offset: int = field(default=1, metadata=at_least(1))  # a position's positive: the same document, this many positions later
    contrastive_temperature: float = field(default=0.1, metadata=above(0))  # divides the cosine similarities


def sparsity_coefficient(cfg: LossConfig, step: int) -> float:
    if cfg.sparsity_warmup_steps <= 0:
        return cfg.sparsity
    return cfg.sparsity * min(1.0, (step + 1) / cfg.sparsity_warmup_steps)


def masked_mean(value_BT: Tensor, mask_BT: Tensor) -> Tensor:
    return (value_BT * mask_BT).sum() / mask_BT.sum().clamp_min(1)


def temporal_contrastive(codes_BTF: Tensor, doc_start_BT: Tensor, mask_BT: Tensor, offset: int, temperature: float) -> Tensor:
    """InfoNCE between the codes of neighbouring positions of one document, against other documents.

    Pairs: every kept position t whose position t + ``offset`` is kept and in the same document (no
    document start in (t, t + offset]): anchor a_i = z_t, positive p_i = z_{t+offset}. With c the cosine
    similarity and tau the temperature,

        s_ij = c(a_i, p_j) / tau
        L = 1/2 mean_i [ -log softmax_j(s_ij)[i] ] + 1/2 mean_i [ -log softmax_j(s_ji)[i] ],

    where for anchor i the softmax runs over its own positive and the positives of the *other documents*
    in the batch (and symmetrically for positive i over anchors). Pairs of i's own document other than
    its positive are left out of the softmax: they are neither positives nor negatives. A code with no
    active latent has similarity 0 to everything. A batch without a pair gives 0.

    From T-SAE (Bhalla et al. 2025, "Temporal Sparse Autoencoders"; AI4LIFE-GROUP/temporal-saes) we keep:
    the codes compared are the sparse codes after (Batch)TopK, of a leading prefix of the dictionary (their
    "high-level" Matryoshka group, 20% of the latents); negatives come from the batch; the cross-entropy
    is symmetric (their CLIP-style mean of both directions). Changed, and why:

    * Cosine similarity over a temperature, as their paper states it, where their code uses raw dot
      products at temperature 1: dot products of codes grow with the activation scale, so the softness
      of the softmax would depend on the units of the data.
    * Positives at a fixed ``offset`` (their "p" pairs are offset 1); their default samples a random
      earlier position of the same context.
    * Same-document positions other than the positive are excluded from the negatives. T-SAE draws
      pairs at random from a buffer of many contexts, so such collisions are rare there; our batches are
      whole windows, where they are the rule, and pushing apart codes of the same document is the
      opposite of what the term is for. Windows cut from the same long document count as different
      documents (a batch does not say otherwise).
    """
    if offset < 1:
        raise UserError(f"loss.contrastive_offset={offset}: the positive must be a later position; use 1 or more")
    B, T, _ = codes_BTF.shape
    doc_BT = doc_start_BT.cumsum(1) + (T + 1) * torch.arange(B, device=codes_BTF.device)[:, None]  # unique per document
    pair_BT = mask_BT[:, :-offset] & mask_BT[:, offset:] & (doc_BT[:, :-offset] == doc_BT[:, offset:])
    if not bool(pair_BT.any()):  # also when offset >= T
        return codes_BTF.new_zeros(())
    anchor_PF = F.normalize(codes_BTF[:, :-offset][pair_BT], dim=-1)
    positive_PF = F.normalize(codes_BTF[:, offset:][pair_BT], dim=-1)
    doc_P = doc_BT[:, :-offset][pair_BT]
    logits_PP = anchor_PF @ positive_PF.T / temperature
    same_doc_PP = doc_P[:, None] == doc_P[None, :]
    diagonal_PP = torch.eye(len(doc_P), dtype=torch.bool, device=doc_P.device)
    logits_PP = logits_PP.masked_fill(same_doc_PP & ~diagonal_PP, float("-inf"))
    target_P = torch.arange(len(doc_P), device=doc_P.device)
    return (F.cross_entropy(logits_PP, target_P) + F.cross_entropy(logits_PP.T, target_P)) / 2


def compute_loss(
    sae: SAE, batch: Windows, cfg: LossConfig, step: int, dead_F: Tensor | None = None
) -> tuple[Tensor, SAEOutput, dict[str, Tensor]]:
    """One forward pass: the scalar loss, the SAE output, and detached per-term figures to log."""
    x, mask = batch.x_BTD, batch.mask_BT
    out = sae(x, batch.context_start_BT)
    sq_err_BT = (out.reconstruction - x).pow(2).sum(-1)
    terms = {"mse": masked_mean(sq_err_BT, mask)}
    coefs = {"mse": cfg.mse}
    for name, cost_BT in sae.nested_losses(x, out).items():
        terms[name], coefs[name] = masked_mean(cost_BT, mask), cfg.mse
    if cfg.sparsity:
        terms["sparsity"] = masked_mean(sae.sparsity_penalty(out), mask)
        coefs["sparsity"] = sparsity_coefficient(cfg, step)
    if cfg.auxk and dead_F is not None and bool(dead_F.any()):
        terms["auxk"] = masked_mean(sae.auxiliary_loss(x, out, dead_F), mask)
        coefs["auxk"] = cfg.auxk
    if cfg.contrastive:
        prefix = max(1, round(cfg.contrastive_prefix * sae.d_sae))
        terms["contrastive"] = temporal_contrastive(out.codes[..., :prefix], batch.doc_start_BT, mask,
                                                    cfg.contrastive_offset, cfg.contrastive_temperature)
        coefs["contrastive"] = cfg.contrastive
    loss = sum(coefs[k] * v for k, v in terms.items())
    logs = {f"loss/{k}": v.detach() for k, v in terms.items()}
    logs["loss/total"] = loss.detach()
    if "sparsity" in coefs:
        logs["coef/sparsity"] = torch.tensor(coefs["sparsity"])
    return loss, out, logs
