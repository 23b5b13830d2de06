import math

import pytest
import torch
from torch.testing import assert_close

from ctxsae.models.base import window_starts
from ctxsae.models.jumprelu import JumpReLU, JumpReLUConfig, JumpReLUSAE, Step
from ctxsae.train.objective import LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_codes_pass_pre_activations_above_the_threshold():
    torch.manual_seed(0)
    sae, x = JumpReLUSAE(JumpReLUConfig(d_in=32, d_sae=96, threshold_init=0.3, bandwidth=0.05)), torch.randn(3, 7, 32)
    with torch.no_grad():
        sae.log_threshold.uniform_(math.log(0.1), math.log(1.0))
    out = sae(x, window_starts(3, 7))
    assert out.codes.shape == (3, 7, 96) and out.reconstruction.shape == x.shape
    assert out.effective_codes is out.codes
    pre = sae.pre_acts(x)
    assert_close(out.codes, pre * (pre > sae.threshold))
    assert_close(out.reconstruction, out.codes @ sae.W_dec + sae.b_dec)
    assert_close(sae.sparsity_penalty(out), (out.codes != 0).sum(-1).float())  # L0


def test_straight_through_gradients_use_the_rectangle_kernel():
    # One latent, theta = 2, eps = 0.2: only pre = 1.95 and 2.05 lie within eps/2 of theta.
    pre = torch.tensor([[1.0], [1.95], [2.05], [3.0]], requires_grad=True)
    theta = torch.tensor([2.0], requires_grad=True)

    z = JumpReLU.apply(pre, theta, 0.2)
    assert_close(z.detach(), torch.tensor([[0.0], [0.0], [2.05], [3.0]]))
    z.sum().backward()
    assert_close(pre.grad, torch.tensor([[0.0], [0.0], [1.0], [1.0]]))  # H(pre - theta)
    assert_close(theta.grad, torch.tensor([-(2.0 / 0.2) * 2]))  # -(theta/eps) * #in window

    pre.grad, theta.grad = None, None
    h = Step.apply(pre, theta, 0.2)
    assert_close(h.detach(), torch.tensor([[0.0], [0.0], [1.0], [1.0]]))
    h.sum().backward()
    assert pre.grad is None  # L0 pushes only on thresholds
    assert_close(theta.grad, torch.tensor([-(1 / 0.2) * 2]))  # -(1/eps) * #in window


def test_l0_penalty_raises_thresholds_only():
    torch.manual_seed(0)
    sae, x = JumpReLUSAE(JumpReLUConfig(d_in=32, d_sae=96)), torch.randn(3, 7, 32)
    sae.sparsity_penalty(sae(x, window_starts(3, 7))).sum().backward()
    assert (sae.log_threshold.grad <= 0).all() and (sae.log_threshold.grad < 0).any()
    assert sae.W_enc.grad is None and sae.W_dec.grad is None


def _fit(fit, evaluate, x, coef, steps, lr):
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUConfig(d_in=64, d_sae=128))
    sae.init_from_data(x.flatten(0, 1))
    fvu_init, _ = evaluate(sae, x)
    fit(sae, x, loss=LossConfig(sparsity=coef), steps=steps, lr=lr)
    return fvu_init, *evaluate(sae, x)


def test_trains_to_low_fvu_and_low_l0(fit, evaluate, token_windows):
    # JumpReLU sharpens its dictionary more slowly than TopK here (200 steps at lr 1e-2: FVU ~0.2).
    fvu_init, fvu_end, l0_end = _fit(fit, evaluate, token_windows, 1.0, steps=300, lr=2e-2)
    assert fvu_end < 0.14 and fvu_end < fvu_init / 6, (fvu_init, fvu_end)
    assert l0_end < 7, l0_end  # ~4 features are active per position


def test_l0_falls_as_the_coefficient_rises(fit, evaluate, token_windows):
    l0 = {coef: _fit(fit, evaluate, token_windows, coef, steps=100, lr=1e-2)[2] for coef in (0.1, 1.0)}
    assert l0[1.0] < 0.7 * l0[0.1], l0


def test_save_load_round_trip(token_windows, round_trip, tmp_path):
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUConfig(d_in=64, d_sae=128, threshold_init=0.5, bandwidth=0.1))
    with torch.no_grad():
        sae.log_threshold.uniform_(-2, 0)  # per-latent thresholds must survive the trip
    round_trip(sae, token_windows[:4], tmp_path / "sae.safetensors")
