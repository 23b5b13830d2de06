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

from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.sparse_encoder import dense_pre_acts, one_thread_on_cpu, row_offsets, select
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_masked
from ctxsae.ranges import above, fraction


class Trace(NamedTuple):
    """What the step loop decided, time-major; everything the backward pass needs besides lambda."""

    idx_TBK: Tensor  # the k entries ranked largest |u - h| at each position (int64)
    sent_TBK: Tensor  # 1.0 where that entry was sent as a code, 0.0 where its difference was zero (no code)
    a_TBF: Tensor  # effective codes
    z_TBF: Tensor  # novel codes
    hold_TBF: Tensor  # lambda_t keep_t (keep: 1.0 where the held value survived the drop rule, else 0.0): h_t = hold_t a_{t-1}


@torch.no_grad()
def select_codes(pre_BTF: Tensor, carry_TB1: Tensor, lam_F: Tensor, k: int, drop_below: float) -> Trace:
    """The step loop of the module docstring, without a graph: codes, effective codes and the choices.

    ``pre_BTF`` are the encoder's pre-activations (u = their ReLU), ``carry_TB1`` is 1.0 where position t
    continues the document of t - 1 (lambda acts as 0 elsewhere), in lambda's dtype. The values are
    those of the equations above bit for bit. A step does what only it can: seven [B, F] operations and
    the top-k; what changes at the k chosen entries is written there ([B, k] operations), and the novel
    codes are scattered for all positions at once afterwards. The drop rule is a 0/1 float applied by
    multiplication: on the CPU ``torch.where`` and ``masked_fill`` run ~10x slower than a multiply,
    which in a loop of T steps showed. Every value masked is >= 0, so it becomes +0.0, as with ``where``.
    """
    B, T, F = pre_BTF.shape
    a_TBF, hold_TBF = pre_BTF.new_empty(T, B, F), lam_F.new_empty(T, B, F)
    idx_TBK = torch.empty(T, B, k, dtype=torch.long, device=pre_BTF.device)
    sent_TBK, diff_TBK = pre_BTF.new_empty(T, B, k), pre_BTF.new_empty(T, B, k)
    a_BF = pre_BTF.new_zeros(B, F)
    # lambda^(positions since the value was set). A dropped value's age is not reset: it is below
    # drop_below already and stays so (lambda <= 1) until a code sets it, so the drops are the same.
    age_BF = torch.zeros_like(a_BF)
    u_BF, diff_BF, size_BF = (torch.empty_like(a_BF) for _ in range(3))
    carry_lam_BF = lam_F.new_empty(B, F)
    size_BK = pre_BTF.new_empty(B, k)
    # On the CPU, steps where every row continues its document use lambda itself, broadcast: the
    # [B, F] product carry_t lambda (1.0 * lambda there, the same values) is skipped. (On a GPU the
    # test would wait for the device; the product is one small kernel there.)
    continues_T = carry_TB1.flatten(1).bool().all(1).tolist() if pre_BTF.device.type == "cpu" else [False] * T
    with one_thread_on_cpu(pre_BTF.device):
        for t in range(T):
            torch.clamp_min(pre_BTF[:, t], 0, out=u_BF)  # ReLU
            lam_BF = lam_F if continues_T[t] else torch.mul(carry_TB1[t], lam_F, out=carry_lam_BF)
            age_BF.mul_(lam_BF)
            hold_BF = torch.ge(age_BF, drop_below, out=hold_TBF[t]).mul_(lam_BF)  # lambda where the value survives, 0 where dropped
            h_BF = torch.mul(hold_BF, a_BF, out=a_TBF[t])
            torch.sub(u_BF, h_BF, out=diff_BF)
            _, idx_BK = torch.topk(torch.abs(diff_BF, out=size_BF), k, dim=-1, sorted=False, out=(size_BK, idx_TBK[t]))
            # A zero difference that makes the top k is no code, and must not re-set the age. Where it
            # is written into a below anyway, u = h there, so a_t = where(chosen, u_t, h_t) all the same.
            sent_BK = torch.ne(size_BK, 0, out=sent_TBK[t])
            age_BF.scatter_(-1, idx_BK, age_BF.gather(-1, idx_BK).mul_(1 - sent_BK).add_(sent_BK))
            torch.gather(diff_BF, -1, idx_BK, out=diff_TBK[t])
            a_BF = h_BF.scatter_(-1, idx_BK, u_BF.gather(-1, idx_BK))
    # + 0.0 turns the -0.0 of a negative difference times 0 into 0.0
    z_TBF = torch.zeros_like(a_TBF).scatter_(-1, idx_TBK, diff_TBK.mul_(sent_TBK).add_(0.0))
    return Trace(idx_TBK, sent_TBK, a_TBF, z_TBF, hold_TBF)


class Recurrence(torch.autograd.Function):
    """(a, z) of a ``Trace`` as functions of the chosen targets u [T, B, k] and lambda [F].

    Given the choices, a_t = where(chosen, u_t, h_t) and z_t = where(chosen, u_t - h_t, 0) with
    h_t = lambda_t keep_t a_{t-1} are linear, and so is the backward pass: with G_t = dL/da_t,

        G_t = dL_t/da_t - lambda_{t+1} keep_{t+1} chosen_{t+1} dL/dz_{t+1}  +  lambda_{t+1} keep_{t+1} ~chosen_{t+1} G_{t+1},

    one fused multiply-add per position in reverse, after G_{t+1} has been read at its chosen entries
    (the targets' gradient) and zeroed there (which leaves dL/dh_{t+1}, ~chosen G_{t+1}). The rest is
    computed for all positions at once, at the k chosen entries where only those matter. lambda's
    gradient passes straight through the drop (dh_t/dlambda = a_{t-1} whether or not the value was
    dropped), as documented above.
    """

    @staticmethod
    def forward(ctx, u_TBK: Tensor, lam_F: Tensor, carry_TB1: Tensor, trace: Trace):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(carry_TB1, trace.idx_TBK, trace.sent_TBK, trace.a_TBF, trace.hold_TBF)
        return trace.a_TBF, trace.z_TBF

    @staticmethod
    def backward(ctx, grad_a_TBF: Tensor | None, grad_z_TBF: Tensor | None):
        carry_TB1, idx_TBK, sent_TBK, a_TBF, hold_TBF = ctx.saved_tensors
        T = a_TBF.shape[0]
        held_TBK = 1 - sent_TBK
        G_TBF = torch.zeros_like(a_TBF) if grad_a_TBF is None else grad_a_TBF.clone()
        grad_u_TBK = torch.empty_like(sent_TBK)
        grad_z_TBK = None
        if grad_z_TBF is not None:  # z is zero off the chosen entries, and so is what its gradient reaches
            grad_z_TBK = grad_z_TBF.gather(-1, idx_TBK).mul_(sent_TBK)
            hold_TBK = hold_TBF[1:].gather(-1, idx_TBK[1:])
            G_TBF[:-1].scatter_(-1, idx_TBK[1:], G_TBF[:-1].gather(-1, idx_TBK[1:]).sub_(hold_TBK.mul_(grad_z_TBK[1:])))
        with one_thread_on_cpu(G_TBF.device):
            for t in reversed(range(T)):
                if t < T - 1:
                    torch.addcmul(G_TBF[t], hold_TBF[t + 1], G_TBF[t + 1], out=G_TBF[t])
                torch.gather(G_TBF[t], -1, idx_TBK[t], out=grad_u_TBK[t])
                G_TBF[t].scatter_(-1, idx_TBK[t], grad_u_TBK[t] * held_TBK[t])
        # The targets receive dL/da + dL/dz where they were sent; only their chosen entries are returned.
        if grad_z_TBK is not None:
            grad_u_TBK += grad_z_TBK
            G_TBF.scatter_(-1, idx_TBK, G_TBF.gather(-1, idx_TBK).sub_(grad_z_TBK))  # dL/dh = -dL/dz where sent
        grad_u_TBK.mul_(sent_TBK)
        # dh_t/dlambda = a_{t-1} where t continues the document, else 0: a sum over (t, b) weighted by
        # carry, as one matrix-vector product (a pass fewer than multiplying by carry and summing).
        grad_lam_F = torch.mv(G_TBF[1:].mul_(a_TBF[:-1]).flatten(0, 1).T, carry_TB1[1:].reshape(-1))
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
        lam_F = self.retention()
        carry_TB1 = (~doc_start_BT.T[..., None]).to(lam_F.dtype)
        # Which entries are sent is decided without a graph (time-major: each step writes one contiguous
        # slice); the gradient then flows through the chosen entries only, encoder included.
        trace = select_codes(pre_BTF, carry_TB1, lam_F.detach(), self.cfg.k, self.cfg.drop_below)
        idx_BTK = trace.idx_TBK.transpose(0, 1)
        u_BTK, pre_BTF = select(self, x_BTD, b_F, pre_BTF, row_offsets(idx_BTK, self.d_sae))
        a_TBF, z_TBF = Recurrence.apply(u_BTK.relu().transpose(0, 1), lam_F, carry_TB1, trace)
        # Decode only the entries that are non-zero or could have been carried: skipping exact zeros
        # is what makes decoding cheap (as in TopK), but an entry that is 0 only because its previous
        # value was not held must still receive its gradient, which tells the retention whether
        # holding would have helped.
        # Codes and held values are >= 0, so a_t + carry_t a_{t-1} is non-zero exactly where either
        # is: one fused pass and one comparison, where three boolean passes took ~2x as long.
        a_now_TBF = a_TBF.detach()
        reach_TBF = torch.empty_like(a_now_TBF)
        reach_TBF[0] = a_now_TBF[0]
        torch.addcmul(a_now_TBF[1:], a_now_TBF[:-1], carry_TB1[1:], out=reach_TBF[1:])
        support_TBF = reach_TBF != 0
        recon_TBD = decode_masked(self.W_dec, a_TBF, support_TBF) + self.b_dec
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
        earlier). ``context_energy_share`` with the carried part of the reconstruction.
        """
        z, a = out.codes.flatten(0, 1), out.effective_codes.flatten(0, 1)
        lam_F = self.retention()
        active, event = a != 0, z != 0
        carried = active & ~event
        starts = active & ((a - z) == 0)  # active, nothing carried in: a run begins here
        return {
            "context_params": float(self.retention_raw.numel()),
            "mean_retention": lam_F.mean().item(),
            "holding_latent_fraction": (lam_F >= self.cfg.drop_below).float().mean().item(),
            "exact_hold_fraction": (lam_F == 1).float().mean().item(),
            "context_energy_share": context_energy_share((a * carried) @ self.W_dec, a @ self.W_dec),
            "carried_fraction": (carried.sum() / active.sum().clamp_min(1)).item(),
            "resets_per_position": (event & ~active).sum().item() / len(z),
            "mean_run_length": (active.sum() / starts.sum().clamp_min(1)).item(),
        }
