"""Recurrent-state contextual SAE: a TopK SAE that only sends what changed.

Every latent keeps a value along the document. At each position the encoder proposes what a
per-token TopK SAE would code (the *target* u_t); the SAE spends its k novel codes on the k
largest differences between that target and what context carries, and holds everything else:

    u_t     = ReLU((x_t - b_dec) W_enc + b_enc)          the per-token target (TopK's pre-codes)
    h_t     = lambda * a_{t-1}                           held values; 0 at a document start
    z_t     = the k largest-|.| entries of u_t - h_t      novel codes: onsets, changes, resets
    a_t     = h_t + z_t                                  effective codes
    x_hat_t = a_t W_dec + b_dec

so a latent is re-sent only when its target moved away from its held value by more than the
k-th largest change at that position. A latent with retention lambda_i = 0 holds nothing and is
exactly a TopK latent; one with lambda_i = 1 holds its value exactly until a code changes it
(a reset is the code z = 0 - h); in between, a held value decays and is dropped to exactly 0
once it has fallen below ``drop_below`` (default 0.1) of the value its last code set, i.e. after
floor(log(drop_below) / log(lambda_i)) positions. Cross-feature mixing is deliberately absent:
latent i's value depends only on latent i's own codes.

Why this form rather than the first prototype's (a_t = ReLU(lambda a_{t-1} + z_t),
z = signed TopK of an encoder fed x_t minus the decoding of lambda a_{t-1}):

1. It starts as its baseline, exactly. Retention starts at 0, and then the forward pass is
   TopK's: the same top-k of the same ReLU'd pre-activations. (Signed TopK at lambda ~ 0 spends
   about half its slots on negative values that the ReLU throws away.)
2. The novel codes are the whole message. a_t is a function of z_1..z_t and lambda alone (the
   drop rule reads only the held value's age), so nothing about x_t reaches the decoder except
   through a counted code: novel L0 honestly counts what the reconstruction costs. Every
   effective activation is a decayed sum of the codes of its run (``attribute``).
3. Effective codes are exactly sparse: held values are exact (lambda = 1) or dropped after a
   finite, documented lifetime, so "active" means at least ``drop_below`` of its set value.
4. It is cheap. Encoder and decoder are the same two big products as TopK, computed for all
   positions at once (decoding only the non-zeros). What is left to the recurrence is [B, F]
   elementwise work and one top-k per position; which entries are chosen depends on a_{t-1}, a
   nonlinearity, so that part is a step loop over T, not a scan.

Learning lambda. lambda_i = clamp(retention_speed * retention_raw_i, 0, 1) is continuous, so the
dictionary co-adapts while context opens. (A binary hold/no-hold per latent with a straight-
through gradient never opened on the synthetic data: at lambda = 1 the derivative is dominated
by values held after their region ended, so it pointed back to 0 even where holding was far
better.) The gradient passes straight through the clamp and the drop, so at lambda_i = 0 it is
sum_t a_{t-1,i} dL/dh_{t,i}: "would holding some of the previous value of i have helped here?",
non-zero while the pathway is still shut. Blind spot: that derivative sees what a held value
does to the reconstruction, not the code slots its resets take from other latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput
from ctxsae.models.sparse_encoder import dense_pre_acts, one_thread_on_cpu, row_offsets, select
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_masked
from ctxsae.ranges import above, fraction


class Trace(NamedTuple):
    """What the step loop decided, time-major; everything the backward pass needs besides lambda."""

    idx_TBK: Tensor  # the k entries ranked largest |u - h| at each position (int64)
    chosen_TBF: Tensor  # bool: entries sent as codes (among idx; a zero difference is not a code)
    a_TBF: Tensor  # effective codes
    z_TBF: Tensor  # novel codes
    keep_TBF: Tensor  # bool: the held value survived the drop rule at t


@torch.no_grad()
def select_codes(u_TBF: Tensor, lam_TBF: Tensor, k: int, drop_below: float) -> Trace:
    """The step loop of the module docstring, without a graph: codes, effective codes and the choices.

    The values are those of the equations above bit for bit. Only what a step needs from the step
    before is computed per step (about a dozen [B, F] operations, written into preallocated buffers
    where they are kept); the novel codes are formed for all positions at once afterwards.
    """
    T, B, F = u_TBF.shape
    a_TBF, diff_TBF = torch.empty_like(u_TBF), torch.empty_like(u_TBF)
    drop_TBF = torch.empty_like(u_TBF, dtype=torch.bool)
    chosen_TBF = torch.zeros_like(u_TBF, dtype=torch.bool)
    idx_TBK = torch.empty(T, B, k, dtype=torch.long, device=u_TBF.device)
    a_BF = u_TBF.new_zeros(B, F)
    age_BF = torch.zeros_like(a_BF)  # lambda^(positions since the held value was set)
    h_BF, size_BF, size_BK = torch.empty_like(a_BF), torch.empty_like(a_BF), u_TBF.new_empty(B, k)
    # Scalars as 0-dim tensors, and torch.where rather than masked_fill_: each step's dozen [B, F]
    # operations are small enough that wrapping a Python scalar, or masked_fill_'s slower kernel, shows.
    zero, one, drop_at = u_TBF.new_zeros(()), u_TBF.new_ones(()), u_TBF.new_tensor(drop_below)
    with one_thread_on_cpu(u_TBF.device):
        for t in range(T):
            age_BF.mul_(lam_TBF[t])
            drop_BF = torch.lt(age_BF, drop_at, out=drop_TBF[t])
            torch.where(drop_BF, zero, torch.mul(lam_TBF[t], a_BF, out=h_BF), out=h_BF)  # lambda a where the value survives, 0 where dropped
            diff_BF = torch.sub(u_TBF[t], h_BF, out=diff_TBF[t])
            _, idx_BK = torch.topk(torch.abs(diff_BF, out=size_BF), k, dim=-1, sorted=False, out=(size_BK, idx_TBK[t]))
            # A zero difference that makes the top k is no code, and must not re-set the age.
            chosen_BF = chosen_TBF[t].scatter_(-1, idx_BK, torch.ne(size_BK, zero))
            torch.where(chosen_BF, one, torch.where(drop_BF, zero, age_BF, out=age_BF), out=age_BF)
            a_BF = torch.where(chosen_BF, u_TBF[t], h_BF, out=a_TBF[t])
    z_TBF = torch.where(chosen_TBF, diff_TBF, zero, out=diff_TBF)
    return Trace(idx_TBK, chosen_TBF, a_TBF, z_TBF, drop_TBF.logical_not_())


class Recurrence(torch.autograd.Function):
    """(a, z) of a ``Trace`` as functions of the chosen targets u [T, B, k] and lambda [F].

    Given the choices, a_t = where(chosen, u_t, h_t) and z_t = where(chosen, u_t - h_t, 0) with
    h_t = lambda_t keep_t a_{t-1} are linear, and so is the backward pass: with G_t = dL/da_t,

        G_t = dL_t/da_t - lambda_{t+1} keep_{t+1} chosen_{t+1} dL/dz_{t+1}  +  lambda_{t+1} keep_{t+1} ~chosen_{t+1} G_{t+1},

    one fused multiply-add per position in reverse; everything else is computed for all positions
    at once. lambda's gradient passes straight through the drop (dh_t/dlambda = a_{t-1} whether or
    not the value was dropped), as documented above.
    """

    @staticmethod
    def forward(ctx, u_TBK: Tensor, lam_F: Tensor, carry_TB1: Tensor, trace: Trace):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(lam_F, carry_TB1, *trace)
        return trace.a_TBF, trace.z_TBF

    @staticmethod
    def backward(ctx, grad_a_TBF: Tensor | None, grad_z_TBF: Tensor | None):
        lam_F, carry_TB1, idx_TBK, chosen_TBF, a_TBF, _, keep_TBF = ctx.saved_tensors
        T = a_TBF.shape[0]
        lam_TBF = carry_TB1 * lam_F
        G_TBF = torch.zeros_like(a_TBF) if grad_a_TBF is None else grad_a_TBF.clone()
        if grad_z_TBF is not None:
            grad_z_TBF = grad_z_TBF.masked_fill(~chosen_TBF, 0.0)
            G_TBF[:-1] -= (lam_TBF[1:] * keep_TBF[1:]) * grad_z_TBF[1:]  # dh_t/da_{t-1} = lambda_t keep_t
        zero = a_TBF.new_zeros(())
        through_TBF = torch.where(chosen_TBF, zero, lam_TBF.mul_(keep_TBF), out=lam_TBF)  # a_{t-1} reaches a_t only where nothing is sent
        with one_thread_on_cpu(G_TBF.device):
            for t in reversed(range(T - 1)):
                torch.addcmul(G_TBF[t], through_TBF[t + 1], G_TBF[t + 1], out=G_TBF[t])
        # The targets receive dL/da + dL/dz where they were sent, and only their chosen entries are
        # returned, so they are read at the k entries, not formed as [T, B, F].
        grad_u_TBK = G_TBF.gather(-1, idx_TBK)
        if grad_z_TBF is not None:
            grad_u_TBK += grad_z_TBF.gather(-1, idx_TBK)
        grad_u_TBK.masked_fill_(~chosen_TBF.gather(-1, idx_TBK), 0.0)
        grad_h_TBF = torch.where(chosen_TBF, zero, G_TBF, out=G_TBF)
        if grad_z_TBF is not None:
            grad_h_TBF -= grad_z_TBF
        grad_lam_F = grad_h_TBF[1:].mul_(a_TBF[:-1]).mul_(carry_TB1[1:]).sum((0, 1))
        return grad_u_TBK, grad_lam_F, None, None


@dataclass
class RecurrentConfig(TopKConfig):
    _target_: str = "ctxsae.models.recurrent.RecurrentSAE"
    retention_init: float = field(default=0.0, metadata=fraction(hi_open=False))  # initial retention lambda of every latent (0: context closed, the SAE starts as TopK)
    retention_speed: float = field(default=10.0, metadata=above(0))  # lambda = clamp(retention_speed * parameter): crosses [0, 1] in ~1 / (speed * lr) Adam steps
    drop_below: float = field(default=0.1, metadata=fraction())  # a held value is zeroed once it has decayed below this fraction of the value its code set
    learn_retention: bool = True  # False: lambda stays at retention_init (the fixed-retention ablation)


class RecurrentSAE(TopKSAE, ContextualSAE):
    """k (``cfg.k``) novel codes per position: onsets, value changes and resets all count."""

    architecture = "recurrent"
    config_class = RecurrentConfig
    cfg: RecurrentConfig

    def __init__(self, cfg: RecurrentConfig):
        super().__init__(cfg)
        # Adam moves every parameter by about lr per step, which suits weights of size ~1/sqrt(d) but
        # would leave lambda, which must cross [0, 1], closed for ~1/lr steps: it is stored scaled down.
        self.retention_raw = nn.Parameter(torch.full((cfg.d_sae,), cfg.retention_init / cfg.retention_speed),
                                          requires_grad=cfg.learn_retention)

    def retention(self) -> Tensor:
        """lambda [F] in [0, 1], with the gradient passed straight through the clamp."""
        r_F = self.cfg.retention_speed * self.retention_raw
        return r_F.clamp(0, 1) + (r_F - r_F.detach())

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "retention", lambda [F] (detached), for ``attribute``."""
        B, T, _ = x_BTD.shape
        pre_BTF, b_F = dense_pre_acts(self, x_BTD)
        # Context enters position t only if t continues the document of t - 1 (never at t = 0).
        carry_TB1 = ~doc_start_BT.T[..., None]
        lam_F = self.retention()
        # Which entries are sent is decided without a graph (time-major: each step reads one contiguous
        # slice); the gradient then flows through the chosen entries only, encoder included.
        u_TBF = pre_BTF.relu().transpose(0, 1).contiguous()
        trace = select_codes(u_TBF, carry_TB1 * lam_F.detach(), self.cfg.k, self.cfg.drop_below)  # lambda 0 across a document start
        idx_BTK = trace.idx_TBK.transpose(0, 1)
        u_BTK, pre_BTF = select(self, x_BTD, b_F, pre_BTF, row_offsets(idx_BTK, self.d_sae))
        a_TBF, z_TBF = Recurrence.apply(u_BTK.relu().transpose(0, 1), lam_F, carry_TB1, trace)
        # Decode only the entries that are non-zero or could have been carried: skipping exact zeros
        # is what makes decoding cheap (as in TopK), but an entry that is 0 only because its previous
        # value was not held must still receive its gradient, which tells the retention whether
        # holding would have helped.
        active_TBF = a_TBF != 0
        carriable_TBF = torch.zeros_like(active_TBF)
        carriable_TBF[1:] = active_TBF[:-1] & carry_TB1[1:]
        recon_TBD = decode_masked(self.W_dec, a_TBF, active_TBF | carriable_TBF) + self.b_dec
        return SAEOutput(
            z_TBF.transpose(0, 1), a_TBF.transpose(0, 1), recon_TBD.transpose(0, 1), pre_BTF,
            {"retention": lam_F.detach()},
        )

    # -- reading the context pathway ----------------------------------------------------------------
    @staticmethod
    def attribute(out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """(position s, lambda_i^(t-s) z_s) for the codes of latent i that make up effective_codes[b, t, i].

        a_s = z_s + h_s and h_s = lambda a_{s-1} wherever something was carried in, so walking back
        until nothing was carried collects every code the activation is made of, each decayed by
        the positions it has been held; the contributions sum to a_t.
        """
        z, a, lam = out.codes[b, :, i], out.effective_codes[b, :, i], out.aux["retention"][i].item()
        carried = a - z  # h: exactly 0 where nothing was carried in
        events, s, weight = [], t, 1.0
        while True:
            if z[s] != 0:
                events.append((s, weight * z[s].item()))
            if carried[s] == 0:
                return events[::-1]
            s, weight = s - 1, weight * lam

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """How much the context pathway does, over all positions of ``out``.

        An effective activation is *carried* if its latent has no code at t (its value was set
        earlier). The context share of the reconstruction is sum_t <C_t, R_t> / sum_t |R_t|^2,
        R = a W_dec and C = (carried part of a) W_dec, both centred over positions; the share of
        the current position's own codes is 1 minus it.
        """
        z, a = out.codes.flatten(0, 1), out.effective_codes.flatten(0, 1)
        lam_F = self.retention()
        active, event = a != 0, z != 0
        carried = active & ~event
        R, C = a @ self.W_dec, (a * carried) @ self.W_dec
        R, C = R - R.mean(0), C - C.mean(0)
        starts = active & ((a - z) == 0)  # active, nothing carried in: a run begins here
        return {
            "context_params": float(self.retention_raw.numel()),
            "mean_retention": lam_F.mean().item(),
            "holding_latent_fraction": (lam_F >= self.cfg.drop_below).float().mean().item(),
            "exact_hold_fraction": (lam_F == 1).float().mean().item(),
            "context_energy_share": ((C * R).sum() / R.pow(2).sum().clamp_min(1e-12)).item(),
            "carried_fraction": (carried.sum() / active.sum().clamp_min(1)).item(),
            "resets_per_position": (event & ~active).sum().item() / len(z),
            "mean_run_length": (active.sum() / starts.sum().clamp_min(1)).item(),
        }
