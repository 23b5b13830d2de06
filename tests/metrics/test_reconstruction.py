import pytest
import torch

from ctxsae.cache.dataset import Windows
from ctxsae.metrics.basic import fvu
from ctxsae.metrics.reconstruction import Reconstruction
from ctxsae.models.base import SAEOutput


def update(r: Reconstruction, x, recon, mask) -> None:
    """One batch: windows ``x`` with the positions ``mask`` keeps, and an SAE output reconstructing them as ``recon``."""
    codes = torch.zeros(*x.shape[:2], 1)
    r.update(Windows(x, torch.full(mask.shape, -1), torch.zeros_like(mask), mask), SAEOutput(codes, codes, recon, codes, {}))


def data(seed=0, B=6, T=10, D=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g) + 3.0  # an offset: FVU's mean must be the whole set's
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    return x, mask


def test_perfect_reconstruction():
    x, mask = data()
    r = Reconstruction(8)
    update(r, x, x.clone(), mask)
    out = r.compute()
    assert out["fvu"] == pytest.approx(0, abs=1e-12) and out["nmse"] == pytest.approx(0, abs=1e-12)
    assert out["cosine"] == pytest.approx(1) and out["norm_ratio"] == pytest.approx(1)


def test_streamed_batches_equal_one_batch_and_basic_fvu():
    x, mask = data()
    recon = x + 0.3 * torch.randn_like(x)
    r = Reconstruction(8)
    for lo in range(0, 6, 2):  # three batches
        update(r, x[lo : lo + 2], recon[lo : lo + 2], mask[lo : lo + 2])
    out = r.compute()
    assert out["fvu"] == pytest.approx(fvu(x, recon, mask).item(), rel=1e-5)
    kept_x, kept_r = x[mask], recon[mask]
    assert out["nmse"] == pytest.approx(((kept_x - kept_r).pow(2).sum() / kept_x.pow(2).sum()).item(), rel=1e-5)
    assert out["mse"] == pytest.approx((kept_x - kept_r).pow(2).sum(-1).mean().item(), rel=1e-5)
    assert out["cosine"] == pytest.approx(torch.cosine_similarity(kept_x, kept_r, dim=-1).mean().item(), rel=1e-5)


def test_predicting_the_mean_gives_fvu_one_and_masked_positions_do_not_count():
    x, mask = data()
    mean = x[mask].mean(0)
    recon = mean.expand_as(x).clone()
    recon[:, 0] = 1e6  # masked: must not count
    r = Reconstruction(8)
    update(r, x, recon, mask)
    assert r.compute()["fvu"] == pytest.approx(1, rel=1e-6)
    zero = Reconstruction(8)
    update(zero, x, torch.zeros_like(x), mask)
    assert zero.compute()["nmse"] == pytest.approx(1) and zero.compute()["norm_ratio"] == 0
