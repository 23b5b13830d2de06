"""Attention SAE: a TopK SAE whose context is sparse causal attention over earlier positions.

The encoder looks back and suppresses; the decoder looks back and treats the feature as active:

    u_s        = TopK_kv(ReLU(pre(x_s)))                  per-token codes at each position: the values
    score(t,s) = q_h(x_t) . k_h(x_s) / sqrt(d_head) - slope_h (t - s)     for s < t in t's document
                 (q_h(x_{t-1}) with ``query_from_past``: then c_t is a function of x_{<t} alone)
    w_h(t, .)  = softmax over {null} + the n_attend best-scoring s        (every other s: weight exactly 0)
    p_h[t,i]   = sum_s w_h(t,s) [u_s[i] > 0]              share of head h's attention on positions where i was on
    c_t[i]     = open_i sum_h pi_hi [p_h[t,i] > 1/2] sum_s w_h(t,s) u_s[i] / p_h[t,i]
    z_t        = TopK_k(ReLU(pre(x_t - c_t W_dec)))       novel codes: what the context does not explain
    a_t        = z_t + c_t                                effective codes;  x_hat_t = a_t W_dec + b_dec

c_t[i] is the attention-weighted value of feature i over the attended positions where it was on,
kept only where those positions hold most of a head's attention. Design choices, and why:

* **Values are per-token codes, not novel codes.** a_t = z_t + sum_s w(t,s) z_s makes the context
  depend on z_{<t}, which depends on earlier contexts: a step loop over T. Worse, softmax weights
  sum to one, so carrying a code that fired once (at the onset) needs all of a head's attention on
  that one position, and features with different onsets dilute each other. Softmax averages; it
  suits values that are dense in time. u_s is what the same encoder sees at s without context, so
  averaging it over earlier positions of a region carries the region's value, and every position
  is computed at once. Cost: a second encoder pass (pre(x) for u, pre(x - c W_dec) for z), skipped
  while the context carries nothing (``novel_code``).
* **Keys strictly earlier, queries from the current position.** With s = t the context could copy
  u_t and leave z empty: the code at t must stay what is new at t. A learned *null* key (value 0)
  lets a head read nothing; it is always visible, so no row is empty and a document start reads
  nothing. The query (from x_t) decides *which* earlier positions to read: that choice is
  information from x_t that costs no code (``context_stats`` reports how much rides on context).
  On the book at layer 16, zeroing W_q after training cost most of the gain over TopK (FVU 0.176 ->
  0.192, TopK k=16 0.196), yet a model trained with ``query_from_past`` keeps it (0.156, seeds 0 and
  1): the trained model leant on its query, the design does not need it. That option closes the
  channel: the query at t reads x_{t-1}, so the context is a prediction from earlier positions only
  and everything the decoder learns about x_t passes through the k novel codes. The price: at a
  region's end the context still carries the old region for one position (codes are >= 0 and
  cannot cancel it). Either way the context reads earlier *activations*, not earlier codes: its
  values are u_s (k_values per position, more than the k sent there) and its keys read x_s. So,
  unlike ``RecurrentSAE`` (whose context is a function of z_1..z_t), novel L0 does not count all
  that the reconstruction costs: ``context_stats`` counts the values read that no code sent
  (there, 16-17 per position: more than TopK saves). With ``k_values = k`` the values are about what
  each position sent (0.7 unsent per position there) and the saving, smaller, is real (README).
* **Sparse attention, not scaled_dot_product_attention.** Every head would need F-wide values
  [B, H, T, F]: measured 7.6x a TopK step at d_in 576, d_sae 2304, 32 x 128 tokens (busy CPU). Each head
  instead reads its n_attend best-scoring positions (softmax renormalised over them and the null
  slot, gradient through the kept scores as in TopK), so the context costs O(T n_attend kv) per
  head and query; p (below) is summed per feature a few rows at a time (``SameFeatureSum``), and
  what follows the majority rule is computed for the carried candidates only. Masking (causal,
  same document) is an additive -inf bias. A whole training step still costs ~2.0x TopK's at
  d_in 576, d_sae 2304, 2048 tokens with the defaults (k_values 64, n_attend 8, 4 heads; one
  thread) while the carry is closed (the rule then runs without the weights' graph), ~3.1x once
  it is open: the top k_values selection over d_sae, the 4M candidates' backward and, once
  c != 0, the second encoder product and top-k remain.
* **Exact sparsity by majority.** Soft weights smear: a feature on at any attended position would
  get a small carried value. Feature i is carried only where more than half of a head's attention
  sits on positions where it was on; elsewhere c is exactly 0. The rule is parameter-free and
  scale-free, and at most 2 kv features pass it per head, so the effective L0
  |supp z_t u supp c_t| <= k + 2 kv n_heads is an honest != 0 count. Switching a feature off is
  the context letting go (the query stops matching positions where it was on): it costs no code.
* **Per-feature carry, closed at init.** Feature i reads only its own earlier values. open_i =
  1[rho_i > 0] is binary (features that never carry are exactly 0, not "small"), with the gradient
  passed straight through to rho_i as in ``RecurrentSAE``: while closed it is
  sum_h pi_hi [p > 1/2] m dL/dc, non-zero, so a feature opens when carrying it would help. All rho
  start below 0: the model starts as TopK exactly. pi_h = softmax over heads picks the heads
  feature i listens to. ``value_rank > 0`` (ablation) mixes features in the values,
  u_s -> u_s (I + A B) with A B of rank r and B = 0 at init; the carry rule still looks at which
  features were on, so effective codes stay exactly sparse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.sparse_encoder import OneThread, dense_pre_acts, encode_topk, one_thread_on_cpu
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_masked
from ctxsae.ranges import at_least, between


@dataclass
class AttentionConfig(TopKConfig):
    _target_: str = "ctxsae.models.attention.AttentionSAE"
    k_values: int = field(default=64, metadata=between(1, "d_sae"))  # per-token codes per position that later positions may carry (the values)
    n_heads: int = field(default=4, metadata=at_least(1))  # attention heads; feature i listens to a softmax mixture of them
    d_head: int = field(default=16, metadata=at_least(1))  # query/key width per head: the pathway stays small (2 d_in n_heads d_head weights)
    n_attend: int = field(default=8, metadata=at_least(1))  # earlier positions each head reads at each query (its best-scoring ones)
    value_rank: int = field(default=0, metadata=at_least(0))  # 0: per-feature carry; r > 0: ablation, rank-r cross-feature value map
    carry_init: float = -0.1  # initial carry logit rho (< 0: every feature starts closed, the model is TopK)
    query_from_past: bool = False  # the query at t reads x_{t-1}, not x_t: no information from x_t outside the novel code


def attention_bias(doc_start_BT: Tensor, slope_H: Tensor) -> Tensor:
    """[B, H, T, T] additive scores: -slope_h (t - s - 1) where s is earlier in t's document, else -inf."""
    T = doc_start_BT.shape[1]
    doc_BT = doc_start_BT.long().cumsum(1)
    t = torch.arange(T, device=doc_start_BT.device)
    dist_TT = (t[:, None] - t[None, :]).to(slope_H.dtype)
    visible_B1TT = ((dist_TT > 0) & (doc_BT[:, :, None] == doc_BT[:, None, :]))[:, None]
    return torch.where(visible_B1TT, -slope_H.view(1, -1, 1, 1) * (dist_TT - 1), float("-inf"))


class SameFeatureSum(torch.autograd.Function):
    """For each row n of candidates (feature idx[n, c], weight w[n, c]): the sum of the row's weights
    over the candidates that share c's feature, [N, C].

    This is ``zeros(N, F).scatter_add(1, idx, w).gather(1, idx)`` bit for bit (the same sums in the same
    order), but a few rows at a time through one reused [rows, F] buffer that stays in cache, instead
    of filling and reading an [N, F] one (a third of the time on the CPU). The map is
    symmetric (the gradient of a candidate is the sum of the gradients of its feature's candidates),
    so the backward pass is the same operation.
    """

    @staticmethod
    def forward(ctx, w_NC: Tensor, idx_NC: Tensor, n_features: int) -> Tensor:
        ctx.save_for_backward(idx_NC)
        ctx.n_features = n_features
        return SameFeatureSum.sums(w_NC, idx_NC, n_features)

    @staticmethod
    def backward(ctx, grad_NC: Tensor):
        (idx_NC,) = ctx.saved_tensors
        return SameFeatureSum.sums(grad_NC.contiguous(), idx_NC, ctx.n_features), None, None

    @staticmethod
    def sums(w_NC: Tensor, idx_NC: Tensor, n_features: int) -> Tensor:
        rows = max(1, (1 << 19) // n_features)  # a 2 MB float32 buffer
        buf_RF = w_NC.new_zeros(rows, n_features)
        out_NC = torch.empty_like(w_NC)
        with one_thread_on_cpu(w_NC.device):
            for start in range(0, len(w_NC), rows):
                idx_RC = idx_NC[start:start + rows]
                buf_rF = buf_RF[:len(idx_RC)].scatter_add_(1, idx_RC, w_NC[start:start + rows])
                torch.gather(buf_rF, 1, idx_RC, out=out_NC[start:start + rows])
                buf_rF.zero_()  # faster than zeroing the touched entries (scatter_)
        return out_NC


def batch_rows(pos_BHTR: Tensor) -> Tensor:
    """[B, H, T, R] row b T + s of each attended position s in the windows flattened to [B T]."""
    B, _, T, _ = pos_BHTR.shape
    return pos_BHTR + T * torch.arange(B, device=pos_BHTR.device).view(B, 1, 1, 1)


def carry_rule(w_BHTR: Tensor, pos_BHTR: Tensor, uv_BTK: Tensor, ui_BTK: Tensor, g_HF: Tensor,
               mix_BTF: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``AttentionSAE.context`` given the gains g [H, F] and, with ``value_rank > 0``, the mixed values [B, T, F]."""
    if not g_HF.detach().any():
        # Every carry closed (at init; in runs where none opens): c = g (...) = 0, and its gradient reaches
        # the gains alone (rho's straight-through); the weights' and values' is exactly 0 (``OneThread``
        # passes zeros on), so the rule runs without their graph: no backward over the 4M candidates.
        w_BHTR, uv_BTK = w_BHTR.detach(), uv_BTK.detach()
        mix_BTF = None if mix_BTF is None else mix_BTF.detach()
    B, H, T, R = w_BHTR.shape
    Kv, Fs = ui_BTK.shape[-1], g_HF.shape[-1]
    device = w_BHTR.device
    # Candidates: the (feature, value) pairs of the attended positions, [B, H, T, R, Kv], their
    # features copied as whole rows of Kv. Values are >= 0, so their sign is 1 where a feature was on.
    rows_N = batch_rows(pos_BHTR).reshape(-1)
    feat_BHTRK = ui_BTK.reshape(B * T, Kv).index_select(0, rows_N).view(B, H, T, R, Kv)
    on_BHTRK = uv_BTK.detach().reshape(B * T, Kv).index_select(0, rows_N).sign_().view(B, H, T, R, Kv)
    w_BHTRK = w_BHTR[..., None] * on_BHTRK
    # p for each candidate: head h's attention on positions where its feature was on.
    p_BHTRK = SameFeatureSum.apply(w_BHTRK.reshape(B * H * T, -1), feat_BHTRK.reshape(B * H * T, -1), Fs).view_as(w_BHTRK)
    # Only the carried candidates contribute or pass a gradient on (elsewhere the contribution is 0
    # and so is its derivative), so the rest is computed for them alone: M of them, in order.
    carried_M = ((p_BHTRK.detach() > 0.5) & (w_BHTRK.detach() > 0)).view(-1).nonzero().squeeze(1)
    row_M = carried_M.div(Kv, rounding_mode="floor")  # (b, h, t, r)
    feat_M = feat_BHTRK.reshape(-1).index_select(0, carried_M)
    at_M = rows_N.index_select(0, row_M)
    val_M = uv_BTK.reshape(-1).index_select(0, (at_M * Kv).add_(carried_M.remainder(Kv)))
    if mix_BTF is not None:
        val_M = val_M + mix_BTF.reshape(-1).index_select(0, at_M.mul_(Fs).add_(feat_M))
    head_N = (Fs * torch.arange(H, device=device)).view(1, H, 1, 1).expand(B, -1, T, R).reshape(-1)  # h F
    query_N = (Fs * torch.arange(B * T, device=device)).view(B, 1, T, 1).expand(-1, H, -1, R).reshape(-1)  # (b T + t) F
    g_M = g_HF.reshape(-1).index_select(0, head_N.index_select(0, row_M).add_(feat_M))
    w_M, p_M = (t_BHTRK.reshape(-1).index_select(0, carried_M) for t_BHTRK in (w_BHTRK, p_BHTRK))
    contrib_M = g_M * w_M * val_M / p_M.clamp_min(0.5)
    # Sum them into their (position, feature) cells, in the order the heads list them.
    cells_M = query_N.index_select(0, row_M).add_(feat_M)
    c_BTF = uv_BTK.new_zeros(B * T * Fs).index_add_(0, cells_M, contrib_M).view(B, T, Fs)
    carried_BTF = torch.zeros(B * T * Fs, dtype=torch.bool, device=device).index_fill_(0, cells_M, True).view(B, T, Fs)
    return c_BTF, carried_BTF, feat_BHTRK, carried_M, contrib_M


def spread(carried_M: Tensor, contrib_M: Tensor, feat_BHTRK: Tensor) -> Tensor:
    """[B, H, T, R, Kv] each attended candidate's contribution to c (0 where it is not carried), from the
    carried candidates' flat indices and contributions [M] that ``carry_rule`` returns."""
    return contrib_M.new_zeros(feat_BHTRK.numel()).index_put((carried_M,), contrib_M).view(feat_BHTRK.shape)


class AttentionSAE(TopKSAE, ContextualSAE):
    """k (``cfg.k``) novel codes per position, plus what the context carries."""

    architecture = "attention"
    config_class = AttentionConfig
    cfg: AttentionConfig

    def __init__(self, cfg: AttentionConfig):
        super().__init__(cfg)
        d_in, d_sae, n_heads, d_head = cfg.d_in, cfg.d_sae, cfg.n_heads, cfg.d_head
        # At init the scores are the recency bias alone (W_q = 0): head h reads the last ~1/slope_h
        # positions, slopes geometric as in ALiBi, so the majority rule has features to pass and the
        # closed carry gets a gradient from the first step. Content (q.k) is learnt from there.
        self.W_q = nn.Parameter(torch.zeros(d_in, n_heads * d_head))
        self.W_k = nn.Parameter(torch.randn(d_in, n_heads * d_head) / math.sqrt(d_in))
        self.b_q = nn.Parameter(torch.zeros(n_heads * d_head))
        self.k_null = nn.Parameter(torch.zeros(n_heads, d_head))
        self.null_logit = nn.Parameter(torch.full((n_heads,), -1.0))  # the previous position outweighs the null slot
        self.slope = nn.Parameter(2.0 ** -torch.arange(n_heads, dtype=torch.float32) * 2)  # score -= slope (t - s - 1)
        self.head_logit = nn.Parameter(torch.zeros(n_heads, d_sae))  # pi: which heads feature i listens to
        self.carry_logit = nn.Parameter(torch.full((d_sae,), float(cfg.carry_init)))  # rho: feature i carried iff > 0
        self.value_A = self.value_B = None
        if cfg.value_rank > 0:
            self.value_A = nn.Parameter(torch.randn(d_sae, cfg.value_rank) / math.sqrt(d_sae))
            self.value_B = nn.Parameter(torch.zeros(cfg.value_rank, d_sae))

    def gain(self) -> Tensor:
        """g [H, F] = open_i pi_hi, open_i = 1[rho_i > 0] with the gradient passed straight through to rho."""
        rho = self.carry_logit
        open_F = (rho > 0).to(rho.dtype) + (rho - rho.detach())
        return self.head_logit.softmax(0) * open_F

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "context" c [B, T, F]; "weights" [B, H, T, 1 + R] (the null slot first), "positions"
        [B, H, T, R], "features" [B, H, T, R, Kv] of each head's attended candidates and the carried
        ones' flat indices into them and contributions, "carried" and "contributions" [M], for
        ``attribute`` and ``context_stats`` (``spread`` lays them out over the candidates)."""
        B, T, _ = x_BTD.shape
        H, R, Kv = self.cfg.n_heads, min(self.cfg.n_attend, T), self.cfg.k_values
        d_head = self.cfg.d_head

        # Values: what the encoder sees at each position without context, as (feature, value) pairs.
        dense = dense_pre_acts(self, x_BTD)
        uv_BTK, ui_BTK, _ = encode_topk(self, x_BTD, Kv, dense)

        # Each head reads the null slot and its R best-scoring earlier positions of the document.
        xc_BTD = x_BTD - self.b_dec
        # From the past, position t asks with x_{t-1}; position 0 has nothing earlier to read, so its query is moot.
        xq_BTD = torch.cat([torch.zeros_like(xc_BTD[:, :1]), xc_BTD[:, :-1]], 1) if self.cfg.query_from_past else xc_BTD
        q_BHTd = (xq_BTD @ self.W_q + self.b_q).view(B, T, H, d_head).transpose(1, 2)
        k_BHTd = (xc_BTD @ self.W_k).view(B, T, H, d_head).transpose(1, 2)
        scale = 1 / math.sqrt(d_head)
        scores_BHTT = scale * q_BHTd @ k_BHTd.transpose(-1, -2) + attention_bias(doc_start_BT, self.slope)
        null_BHT1 = scale * (q_BHTd * self.k_null[None, :, None]).sum(-1, keepdim=True) + self.null_logit[:, None, None]
        top_BHTR, pos_BHTR = scores_BHTT.topk(R, dim=-1)
        w_BHT1R = torch.cat([null_BHT1, top_BHTR], dim=-1).softmax(-1)  # weight 0 where a kept score is -inf
        w_BHTR = w_BHT1R[..., 1:]

        c_BTF, carried_BTF, feat_BHTRK, carried_M, contrib_M = self.context(w_BHTR, pos_BHTR, uv_BTK, ui_BTK)

        # Novel codes from what the context leaves unexplained.
        cW_BTD = decode_masked(self.W_dec, c_BTF, carried_BTF)
        pre_BTF, z_BTF, zW_BTD = self.novel_code(x_BTD, cW_BTD, dense, ui_BTK)
        recon_BTD = zW_BTD + cW_BTD + self.b_dec
        aux = {"context": c_BTF, "weights": w_BHT1R, "positions": pos_BHTR, "features": feat_BHTRK,
               "carried": carried_M, "contributions": contrib_M}
        return SAEOutput(z_BTF, z_BTF + c_BTF, recon_BTD, pre_BTF, aux)

    def novel_code(self, x_BTD: Tensor, cW_BTD: Tensor, dense: tuple[Tensor, Tensor], ui_BTK: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``topk_code(x - c W_dec)`` given ``dense = dense_pre_acts(self, x)`` and the values' latents ui.

        While the context carries nothing (at init, and in runs where no carry opens) x - c W_dec is x
        bit for bit: its pre-activations are ``dense`` (no second encoder product) and its top k are
        among the values' top k_values (no second selection over d_sae). Recomputing only the shifted
        positions would be cheaper still, but a matrix product's rounding depends on how many rows it
        is given, and causality and document resets are tested bit for bit: the second product is
        all or nothing.
        """
        k, xn_BTD = self.cfg.k, x_BTD - cW_BTD  # c's gradient through the novel code flows via xn either way
        if cW_BTD.any() or ui_BTK.shape[-1] < k:
            return self.topk_code(xn_BTD)
        among_BTk = dense[0].gather(-1, ui_BTK).topk(k, dim=-1, sorted=False).indices
        return self.topk_code(xn_BTD, dense, ui_BTK.gather(-1, among_BTk))

    def context(self, w_BHTR: Tensor, pos_BHTR: Tensor, uv_BTK: Tensor, ui_BTK: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(c [B, T, F], carried [B, T, F] bool: c's support, the candidates' features [B, H, T, R, Kv],
        the carried candidates' flat indices into them [M] and their contributions [M]) given each
        head's weights w and positions of its R attended slots and each position's values (uv, ui)
        [B, T, Kv]: the majority rule and c_t of the module docstring. The contributions stay [M]: a
        [B, H, T, R, Kv] copy, zero but for them, would be written every step for the readers below.

        Some forty operations on millions of candidates, each too small to gain from a second thread:
        they run on one (``OneThread``), forward and backward.
        """
        mix_BTF = None
        if self.value_A is not None:
            B, T, _ = uv_BTK.shape
            u_BTF = torch.zeros(B, T, self.d_sae, dtype=uv_BTK.dtype, device=uv_BTK.device).scatter(-1, ui_BTK, uv_BTK)
            mix_BTF = (u_BTF @ self.value_A) @ self.value_B
        return OneThread.apply(carry_rule, w_BHTR, pos_BHTR, uv_BTK, ui_BTK, self.gain(), mix_BTF)

    # -- reading the context pathway ----------------------------------------------------------------
    @torch.no_grad()
    def attribute(self, out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """(position, contribution) pairs summing to effective_codes[b, t, i].

        Position t contributes its novel code z_t[i]; an earlier position s contributes
        sum_h open_i pi_hi [carried by h] w_h(t, s) u_s[i] / p_h[t, i], its share of the carried value.
        """
        contrib_S = torch.zeros(out.codes.shape[1], dtype=out.codes.dtype, device=out.codes.device)
        mine_HRK = out.aux["features"][b, :, t] == i
        pos_HRK = out.aux["positions"][b, :, t, :, None].expand_as(mine_HRK)
        contrib_HRK = spread(out.aux["carried"], out.aux["contributions"], out.aux["features"])[b, :, t]
        contrib_S.index_add_(0, pos_HRK[mine_HRK], contrib_HRK[mine_HRK])
        events = [(s, contrib_S[s].item()) for s in range(t) if contrib_S[s] != 0]
        if out.codes[b, t, i] != 0:
            events.append((t, out.codes[b, t, i].item()))
        return events

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """Size and use of the context pathway over all positions of ``out``.

        ``context_energy_share`` with the context's part c W_dec of the reconstruction a W_dec;
        ``carried_unsent_share``: the share of the carried value (sum of contributions) read from an
        earlier position s where the feature was not in the effective code a_s, i.e. never decoded
        there: what the context passes on that no code paid for (0 for ``RecurrentSAE`` by design);
        ``unsent_sources_per_position``: how many such (s, feature) values are read, per position, i.e.
        the codes it would cost to send them (each once, at s): novel L0 plus this is what a code-only
        decoder would have to receive, at least (where i was decoded at s, the value read is still
        u_s[i], not a_s[i]).
        """
        B, T, Fs = out.codes.shape
        contrib = spread(out.aux["carried"], out.aux["contributions"], out.aux["features"])
        source = batch_rows(out.aux["positions"])[..., None] * Fs + out.aux["features"]  # (b T + s) F + i
        a_at_source = out.effective_codes.reshape(-1).take(source)
        unsent = (contrib != 0) & (a_at_source == 0)
        carried_total = contrib.abs().sum()
        z, c = out.codes.flatten(0, 1), out.aux["context"].flatten(0, 1)
        a = z + c
        w = out.aux["weights"]
        T = out.codes.shape[1]
        dist = torch.arange(T, device=w.device).view(1, 1, T, 1) - out.aux["positions"]
        read = w[..., 1:].sum(-1).clamp_min(1e-12)
        active = a != 0
        pathway = [self.W_q, self.W_k, self.b_q, self.k_null, self.null_logit, self.slope, self.head_logit,
                   self.carry_logit, self.value_A, self.value_B]
        return {
            "context_params": float(sum(p.numel() for p in pathway if p is not None)),
            "context_energy_share": context_energy_share(c @ self.W_dec, a @ self.W_dec),
            "carried_fraction": ((c != 0).sum() / active.sum().clamp_min(1)).item(),
            "carried_without_code_fraction": (((c != 0) & (z == 0)).sum() / active.sum().clamp_min(1)).item(),
            "carried_unsent_share": (contrib.abs()[unsent].sum() / carried_total.clamp_min(1e-12)).item(),
            "unsent_sources_per_position": source[unsent].unique().numel() / (B * T),
            "l0_context": (c != 0).sum(-1).float().mean().item(),
            "carried_feature_fraction": (self.carry_logit > 0).float().mean().item(),
            "null_attention": w[..., 0].mean().item(),
            "attended_distance": ((w[..., 1:] * dist).sum(-1) / read).mean().item(),
            "recency_slope_mean": self.slope.mean().item(),
        }
