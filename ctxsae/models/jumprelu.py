"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead").

    pre   = (x - b_dec) W_enc + b_enc
    z     = pre * H(pre - theta),     theta = exp(log_threshold), one per latent
    x_hat = z W_dec + b_dec
    cost  = L0 = sum_i H(pre_i - theta_i)   (per position)

A latent is either off or passes its pre-activation unchanged, so there is no L1 shrinkage, and
the sparsity cost is L0 itself. H has zero gradient almost everywhere, so theta learns through
straight-through estimators: in the backward pass the derivative of H(pre - theta) in theta is
replaced by a kernel density estimate, -(1/eps) K((pre - theta)/eps) with the rectangle kernel
K(u) = 1[|u| < 1/2] of width eps (``bandwidth``). Inputs get their ordinary gradient where the
latent is on; H passes no gradient to pre (the paper's choice).

Scale: the paper normalises E|x|^2 = 1 and uses theta_0 = eps = 0.001. We normalise E|x|^2 = d_in,
so every pre-activation is sqrt(d_in) times larger: at initialisation (unit-norm encoder columns)
pre ~ N(0, 1) here against N(0, 1/d_in) there, and trained codes are ~1-5, not ~0.01-0.1. In units
of that initial spread the paper's eps is ~0.05, and we keep it: a few percent of a typical code
(small bias), yet a few percent of a batch's tokens fall in each latent's window (tens of samples
in 4096 tokens). theta_0 = 1 instead of the paper's ~0.05: one initial standard deviation, so ~16%
of latents still pass at the start (dense, nothing dead), and about where thresholds settle for
L0 ~25-40 on SmolLM2 layer-8 activations. Adam moves log theta by at most ~lr per step, so a small
theta_0 costs thousands of steps of climbing: from 0.3, 400 steps at lr 2e-3 ended at L0 116-248
(sparsity 1-0.1); from 1, at L0 25-39 (sparsity 1-0.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ctxsae.models.base import SAE, SAEConfig, SAEOutput
from ctxsae.ranges import above


@dataclass
class JumpReLUConfig(SAEConfig):
    _target_: str = "ctxsae.models.jumprelu.JumpReLUSAE"
    threshold_init: float = field(default=1.0, metadata=above(0))  # initial theta of every latent (inputs have E|x|^2 = d_in)
    bandwidth: float = field(default=0.05, metadata=above(0))  # width eps of the rectangle kernel in the STE for theta


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


def _sum_to_latents(grad_NF: Tensor) -> Tensor:
    return grad_NF.reshape(-1, grad_NF.shape[-1]).sum(0)


class JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - theta); d z/d theta := -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_z * (pre > theta)
        grad_theta = -(theta / eps) * _rectangle((pre - theta) / eps) * grad_z
        return grad_pre, _sum_to_latents(grad_theta), None


class Step(torch.autograd.Function):
    """H(pre - theta); d H/d theta := -(1/eps) K((pre - theta)/eps), and no gradient to pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1 / eps) * _rectangle((pre - theta) / eps) * grad_h
        return None, _sum_to_latents(grad_theta), None


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        # Learn log theta: theta stays positive and Adam's steps become relative changes.
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.threshold_init)))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        pre_BTF = self.pre_acts(x_BTD)
        codes_BTF = JumpReLU.apply(pre_BTF, self.threshold, self.cfg.bandwidth)
        return SAEOutput(codes_BTF, codes_BTF, self.decode(codes_BTF), pre_BTF, {})

    def sparsity_penalty(self, out: SAEOutput) -> Tensor:
        return Step.apply(out.pre_acts, self.threshold, self.cfg.bandwidth).sum(-1)
