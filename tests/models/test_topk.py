import pytest
import torch
from torch.testing import assert_close

from ctxsae.models.base import window_starts
from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.train.objective import LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _sae(**overrides) -> TopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=32, d_sae=96, k=5, **overrides))
    with torch.no_grad():
        sae.b_dec.normal_()  # a non-zero bias, so "decoded without b_dec" is tested
    return sae


def test_keeps_the_k_largest_relu_pre_activations():
    sae, x = _sae(), torch.randn(3, 7, 32)
    out = sae(x, window_starts(3, 7))
    assert out.codes.shape == (3, 7, 96) and out.reconstruction.shape == x.shape
    assert out.effective_codes is out.codes
    relu = sae.pre_acts(x).relu()
    kth = relu.topk(5, dim=-1).values[..., -1:]
    assert_close(out.codes, torch.where(relu >= kth, relu, 0.0))
    assert ((out.codes != 0).sum(-1) <= 5).all()
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: L0 is exactly k
    assert ((sae(x, window_starts(3, 7)).codes != 0).sum(-1) == 5).all()


def test_sparse_decode_matches_dense_decode_and_its_gradients():
    sae, x = _sae(), torch.randn(3, 7, 32)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    out = sae(x, window_starts(3, 7))
    assert_close(out.reconstruction, out.codes @ sae.W_dec + sae.b_dec)
    target = torch.randn_like(x)
    sparse = torch.autograd.grad((out.reconstruction - target).pow(2).sum(), params)
    out = sae(x, window_starts(3, 7))
    dense = torch.autograd.grad((sae.decode(out.codes) - target).pow(2).sum(), params)
    for a, b in zip(sparse, dense):
        assert_close(a, b)


def test_auxk_is_zero_without_dead_latents():
    sae, x = _sae(), torch.randn(3, 7, 32)
    aux = sae.auxiliary_loss(x, sae(x, window_starts(3, 7)), torch.zeros(96, dtype=torch.bool))
    assert aux.shape == (3, 7) and (aux == 0).all()


def test_auxk_fits_the_residual_with_the_top_dead_latents_only():
    sae, x = _sae(auxk_k=4), torch.randn(3, 7, 32)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::6] = True  # 16 dead latents, of which AuxK may use 4 per position
    out = sae(x, window_starts(3, 7))
    aux = sae.auxiliary_loss(x, out, dead)

    e = (x - out.reconstruction).detach()
    dead_relu = torch.where(dead, sae.pre_acts(x).relu(), 0.0)
    kth = dead_relu.topk(4, dim=-1).values[..., -1:]
    used = (dead_relu >= kth) & (dead_relu > 0)
    e_hat = torch.where(used, dead_relu, 0.0) @ sae.W_dec  # no b_dec: it models e
    assert_close(aux, (e - e_hat).pow(2).sum(-1))
    assert (aux > 0).all()

    aux.sum().backward()
    # Gradient reaches exactly the dead latents AuxK used somewhere, encoder and decoder.
    used_F = used.flatten(0, 1).any(0)
    assert used_F.sum() >= 4 and not used_F[~dead].any()
    assert torch.equal(sae.W_enc.grad.abs().sum(0) > 0, used_F)
    assert torch.equal(sae.W_dec.grad.abs().sum(1) > 0, used_F)


def test_trains_to_low_fvu_with_k_active(fit, token_windows, evaluate):
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=64, d_sae=128, k=8))
    sae.init_from_data(token_windows.flatten(0, 1))
    fvu_init, _ = evaluate(sae, token_windows)
    module = fit(sae, token_windows, loss=LossConfig(auxk=1 / 32), steps=200, lr=1e-2)
    fvu_end, l0_end = evaluate(sae, token_windows)
    assert fvu_end < 0.13 and fvu_end < fvu_init / 6, (fvu_init, fvu_end)
    with torch.no_grad():
        out = sae(token_windows, window_starts(*token_windows.shape[:2]))
    # Exactly k active, unless fewer than k pre-activations are positive.
    n_positive = (out.pre_acts > 0).sum(-1)
    assert ((out.codes != 0).sum(-1) == n_positive.clamp(max=8)).all()
    assert 7 < l0_end <= 8
    assert not module.dead_F().any()
    assert_close(sae.W_dec.norm(dim=1), torch.ones(128))


def test_save_load_round_trip(token_windows, round_trip, tmp_path):
    torch.manual_seed(0)
    round_trip(TopKSAE(TopKConfig(d_in=64, d_sae=128, k=8, auxk_k=32)), token_windows[:4], tmp_path / "sae.safetensors")
