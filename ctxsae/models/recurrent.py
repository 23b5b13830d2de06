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

import torch
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_masked
from ctxsae.ranges import above, fraction


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
        B = x_BTD.shape[0]
        pre_BTF = self.pre_acts(x_BTD)
        # Time-major, so each step reads one contiguous [B, F] slice.
        u_TBF = pre_BTF.relu().transpose(0, 1).contiguous()
        # Context enters position t only if t continues the document of t - 1 (never at t = 0).
        carry_TB1 = ~doc_start_BT.T[..., None]
        # Straight through the clamp: a latent at lambda = 0 still learns whether holding would help.
        lam_TBF = carry_TB1 * self.retention()  # 0 across a document start

        a_BF = u_TBF.new_zeros(B, self.d_sae)
        age_BF = torch.zeros_like(a_BF)  # lambda^(positions since the held value was set)
        held, chosen, effective = [], [], []
        for u_BF, lam_BF in zip(u_TBF.unbind(0), lam_TBF.unbind(0)):
            with torch.no_grad():
                age_BF = age_BF * lam_BF
                drop_BF = age_BF < self.cfg.drop_below
            # Forward: lambda a where the value survives, 0 where it is dropped. The gradient reaches
            # lambda either way: would the dropped remainder have been worth keeping?
            h_BF = (lam_BF - (lam_BF * drop_BF).detach()) * a_BF
            with torch.no_grad():
                diff_BF = u_BF - h_BF
                idx_BK = diff_BF.abs().topk(self.cfg.k, dim=-1, sorted=False).indices
                # A zero difference that makes the top k is no code, and must not re-set the age.
                chosen_BF = torch.zeros_like(diff_BF, dtype=torch.bool).scatter_(-1, idx_BK, True) & (diff_BF != 0)
                age_BF = torch.where(chosen_BF, 1.0, age_BF.masked_fill(drop_BF, 0.0))
            a_BF = torch.where(chosen_BF, u_BF, h_BF)
            held.append(h_BF)
            chosen.append(chosen_BF)
            effective.append(a_BF)
        a_TBF = torch.stack(effective)
        z_TBF = torch.where(torch.stack(chosen), u_TBF - torch.stack(held), 0.0)
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
            {"retention": self.retention().detach()},
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
