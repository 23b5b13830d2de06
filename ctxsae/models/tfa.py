"""Temporal Feature Analysis (TFA): a dense *predicted* code from attention plus a sparse *novel* code.

Lubana et al., "Priors in Time: Missing Inductive Biases for Language Model Interpretability"
(arXiv 2511.01836; code github.com/eslubana/temporalSAEs; SAELens ``TemporalSAE``). Per position t:

    u_t      = ReLU(pre(x_t))                                   codes of the input, all positions
    o_t      = Attn(query u_t; keys, values u_{t-1}, u_{t-2}, ... of t's document, and an empty slot) W_o
    d_t      = ReLU(o_t) W_dec                                   direction the context predicts
    beta_t   = <d_t, x_t - b_dec> / |d_t|^2                       how much of x_t lies along it
    pred_t   = gain * beta_t ReLU(o_t)                           predicted code: dense
    z_t      = TopK_k(ReLU(pre(x_t - gain * beta_t d_t)))        novel code: sparse, from the residual
    a_t      = pred_t + z_t;   x_hat_t = a_t W_dec + b_dec

codes = z (the sparsity constraint applies there only); effective_codes = pred + z, which is dense:
ReLU(o) is non-zero for about half the latents, so the effective L0 is of the order of d_sae / 2.
That is TFA's trade: the context predicts a whole direction and the magnitude along it comes from
x_t itself (beta_t), so the novel code only pays for what is orthogonal to the prediction.

Followed from the reference code: attention in the dictionary basis (queries from the current
codes, keys and values from the codes shifted by one, so position t reads positions < t plus an
all-zero slot), causal softmax attention with biases on q, k, v and output, a query/key width of
d_sae / bottleneck_factor split over heads, ReLU on the attention output, the projection
coefficient beta, TopK on the residual's codes, one attention layer (its published configs), and
the scaled-unit-norm initialisation of the attention maps. Deviations, and why:

* ``gain`` (a scalar, 0 at init) scales the prediction. The reference has none; without it the
  model cannot start as its TopK baseline (beta makes the prediction scale-free, so shrinking the
  attention maps would not close it, and ReLU(0) would pass no gradient). At gain = 1 it is the
  reference layer.
* Our encoder is untied (W_enc initialised as W_dec^T, as every SAE here) and has b_enc; the
  reference ties E = D^T, has no encoder bias and scales inputs by 1 / (4 d_in) to match its
  N(0, 1) dictionary. Our decoder rows are unit norm, so no such scale is needed.
* Attention is reset at document starts (the shifted slot at a document start is zeroed and
  earlier documents are masked); the reference trains on single-document windows.
* The value/output maps are narrowed to d_value = d_sae / 8 by default (d_sae -> d_value -> d_sae).
  The reference uses d_value = d_sae (``model.d_value=0``): 2 d_sae^2 weights, four times the
  dictionary at d_sae = 4 d_in, and most of the cost of a step (10.7x a TopK step against 3.4x at
  d_sae / 8, ``python -m ctxsae.bench``). On the synthetic ground truth (k 4, d_sae 256, 500k tokens)
  the narrow maps gave held-out FVU 0.472 against 0.469 and effective L0 157 against 139.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.ranges import at_least, between


@dataclass
class TFAConfig(TopKConfig):
    _target_: str = "ctxsae.models.tfa.TFASAE"
    n_heads: int = field(default=4, metadata=at_least(1))  # attention heads
    bottleneck_factor: int = field(default=64, metadata=between(1, "d_sae"))  # query/key width = d_sae // bottleneck_factor (reference default 64)
    d_value: int | None = field(default=None, metadata=at_least(0))  # width of the value/output maps; None: d_sae // 8; 0: d_sae, as in the reference


def shifted_doc_mask(doc_start_BT: Tensor) -> Tensor:
    """[B, 1, T, T] bool: query t sees slots s <= t of its own document (slot s holds position s - 1)."""
    T = doc_start_BT.shape[1]
    doc_BT = doc_start_BT.long().cumsum(1)
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=doc_start_BT.device).tril()
    return (causal_TT & (doc_BT[:, :, None] == doc_BT[:, None, :]))[:, None]


def scaled_columns(d_in: int, d_out: int, norm: float) -> Tensor:
    """[d_in, d_out] random map whose output units have weight vectors of the given norm (reference init)."""
    W = torch.randn(d_in, d_out)
    return W / W.norm(dim=0, keepdim=True) * norm


class TFASAE(TopKSAE, ContextualSAE):
    """k (``cfg.k``) novel codes per position: TopK of the residual's codes."""

    architecture = "tfa"
    config_class = TFAConfig
    cfg: TFAConfig
    eps = 1e-6  # added to |d_t| in beta, as in the reference

    def __init__(self, cfg: TFAConfig):
        super().__init__(cfg)
        d_sae, n_heads = cfg.d_sae, cfg.n_heads
        d_qk, d_v = d_sae // cfg.bottleneck_factor, d_sae // 8 if cfg.d_value is None else cfg.d_value or d_sae
        if d_qk < n_heads or d_qk % n_heads or d_v < n_heads or d_v % n_heads:
            raise ValueError(
                f"d_sae // bottleneck_factor = {d_qk} and d_value = {d_v} must be positive multiples of n_heads = {n_heads}:"
                " lower model.bottleneck_factor or model.n_heads, or set model.d_value"
            )
        self.d_qk, self.d_v = d_qk, d_v
        self.W_q = nn.Parameter(scaled_columns(d_sae, d_qk, 1 / math.sqrt(d_qk // n_heads)))
        self.W_k = nn.Parameter(scaled_columns(d_sae, d_qk, 1 / math.sqrt(d_qk // n_heads)))
        self.W_v = nn.Parameter(scaled_columns(d_sae, d_v, 1 / math.sqrt(d_v // n_heads)))
        self.W_o = nn.Parameter(scaled_columns(d_v, d_sae, 1 / math.sqrt(d_v)))
        self.b_q, self.b_k = nn.Parameter(torch.zeros(d_qk)), nn.Parameter(torch.zeros(d_qk))
        self.b_v, self.b_o = nn.Parameter(torch.zeros(d_v)), nn.Parameter(torch.zeros(d_sae))
        self.gain = nn.Parameter(torch.zeros(()))  # closed at init: the model starts as TopK

    def heads(self, t_BTX: Tensor) -> Tensor:
        B, T, X = t_BTX.shape
        return t_BTX.view(B, T, self.cfg.n_heads, X // self.cfg.n_heads).transpose(1, 2)

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "predicted" pred [B, T, F], "attn_out" o [B, T, F], "beta" [B, T, 1], the heads' "q",
        "k", "v" and the slot "mask" [B, 1, T, T], for ``attribute`` and ``context_stats``."""
        B, T, _ = x_BTD.shape

        # Context: the input's codes shifted by one; the slot at a document start is empty.
        u_BTF = self.pre_acts(x_BTD).relu()
        ctx_BTF = F.pad(u_BTF[:, :-1], (0, 0, 1, 0)) * ~doc_start_BT[..., None]
        q_BHTd = self.heads(u_BTF @ self.W_q + self.b_q)
        k_BHTd = self.heads(ctx_BTF @ self.W_k + self.b_k)
        v_BHTv = self.heads(ctx_BTF @ self.W_v + self.b_v)
        mask_B1TT = shifted_doc_mask(doc_start_BT)
        attn_BHTv = F.scaled_dot_product_attention(q_BHTd, k_BHTd, v_BHTv, attn_mask=mask_B1TT)
        o_BTF = attn_BHTv.transpose(1, 2).reshape(B, T, self.d_v) @ self.W_o + self.b_o

        # Predicted part: the component of x_t along the direction the context predicts.
        p_BTF = o_BTF.relu()
        d_BTD = p_BTF @ self.W_dec
        d_norm_BT1 = d_BTD.norm(dim=-1, keepdim=True) + self.eps
        beta_BT1 = (d_BTD * (x_BTD - self.b_dec)).sum(-1, keepdim=True) / d_norm_BT1.pow(2)
        pred_BTF = self.gain * beta_BT1 * p_BTF
        x_pred_BTD = self.gain * beta_BT1 * d_BTD

        # Novel part: TopK of the codes of what the prediction leaves.
        pre_BTF, z_BTF, zW_BTD = self.topk_code(x_BTD - x_pred_BTD)
        recon_BTD = zW_BTD + x_pred_BTD + self.b_dec
        aux = {"predicted": pred_BTF, "attn_out": o_BTF, "beta": beta_BT1, "q": q_BHTd, "k": k_BHTd, "v": v_BHTv,
               "mask": mask_B1TT}
        return SAEOutput(z_BTF, pred_BTF + z_BTF, recon_BTD, pre_BTF, aux)

    def attention_weights(self, out: SAEOutput) -> Tensor:
        """w [B, H, T, T] over slots (slot s holds position s - 1; an empty slot at a document start)."""
        q, k = out.aux["q"], out.aux["k"]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.masked_fill(~out.aux["mask"], float("-inf")).softmax(-1)

    # -- reading the context pathway ----------------------------------------------------------------
    @torch.no_grad()
    def attribute(self, out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """(position, contribution) pairs summing to effective_codes[b, t, i].

        Where ReLU(o_t[i]) > 0, pred_t[i] = gain beta_t o_t[i] and o_t[i] splits exactly over the
        attention slots: slot s adds gain beta_t sum_h w_h(t, s) v_h(s) . W_o[h, i], credited to
        position s - 1. Position t gets its novel code plus the context-free rest (the output bias
        and the empty slot at the document start), all scaled by beta_t, which x_t sets.
        """
        contrib_S = torch.zeros(out.codes.shape[1] + 1, dtype=out.codes.dtype, device=out.codes.device)
        scale = (self.gain * out.aux["beta"][b, t, 0]).item()
        if out.aux["attn_out"][b, t, i] > 0 and scale != 0:
            w_HS = self.attention_weights(out)[b, :, t]
            Wo_Hv = self.W_o[:, i].view(self.cfg.n_heads, -1)
            per_slot_S = scale * torch.einsum("hs,hsv,hv->s", w_HS, out.aux["v"][b], Wo_Hv)
            doc_start = int(out.aux["mask"][b, 0, t].nonzero()[0])  # the first slot t sees is its empty slot
            contrib_S[:t] = per_slot_S[1 : t + 1]
            contrib_S[:doc_start] = 0.0
            contrib_S[t] = per_slot_S[doc_start] + scale * self.b_o[i]
        contrib_S[t] += out.codes[b, t, i]
        return [(s, contrib_S[s].item()) for s in range(t + 1) if contrib_S[s] != 0]

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """Size and use of the prediction over all positions of ``out``.

        ``context_energy_share`` with the prediction's part pred W_dec of the reconstruction a W_dec;
        pred_energy_share is the reference's |pred W_dec|^2 / (|pred W_dec|^2 + |z W_dec|^2).
        """
        z, pred = out.codes.flatten(0, 1), out.aux["predicted"].flatten(0, 1)
        R, C, N = (z + pred) @ self.W_dec, pred @ self.W_dec, z @ self.W_dec
        share_raw = C.pow(2).sum() / (C.pow(2).sum() + N.pow(2).sum()).clamp_min(1e-12)
        w = self.attention_weights(out)
        T = w.shape[-1]
        first_BT = out.aux["mask"][:, 0].int().argmax(-1)  # each query's empty slot (its document start)
        empty_BHT = w.gather(-1, first_BT[:, None, :, None].expand(-1, w.shape[1], -1, 1)).squeeze(-1)
        slots = torch.arange(T, device=w.device)
        back_TT = (slots[:, None] - slots[None, :] + 1).clamp_min(0)  # slot s holds position s - 1: t - s + 1 back
        back_BHT = (w * back_TT).sum(-1) - empty_BHT * back_TT.gather(1, first_BT.T).T[:, None]  # real slots only
        read_BHT = 1 - empty_BHT
        pathway = [self.W_q, self.W_k, self.W_v, self.W_o, self.b_q, self.b_k, self.b_v, self.b_o, self.gain]
        return {
            "context_params": float(sum(p.numel() for p in pathway)),
            "context_energy_share": context_energy_share(C, R),
            "pred_energy_share": share_raw.item(),
            "l0_predicted": (pred != 0).sum(-1).float().mean().item(),
            "gain": self.gain.item(),
            "empty_slot_attention": empty_BHT.mean().item(),
            "attended_distance": (back_BHT.sum() / read_BHT.sum().clamp_min(1e-12)).item(),
        }
