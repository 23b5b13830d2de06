import pytest
import torch

from ctxsae.cache.dataset import Windows
from ctxsae.metrics.sparsity import LOG10_FREQ_EDGES, Sparsity, firing_histogram
from ctxsae.models.base import SAEOutput


def out(z, a):
    return SAEOutput(z, a, torch.zeros(*z.shape[:2], 1), pre_acts=z, aux={})


def batch(mask):
    return Windows(torch.zeros(*mask.shape, 1), torch.full(mask.shape, -1), torch.zeros_like(mask), mask)


def test_l0_l1_dead_dense_on_hand_built_codes():
    B, T, F = 2, 50, 5
    z = torch.zeros(B, T, F)
    z[:, :, 0] = 1.0  # fires everywhere: dense
    z[0, 3, 1] = -2.0  # fires once (a signed diff counts)
    z[1, ::10, 2] = 0.5  # fires at t = 0, 10, .., 40 of one window: 4 kept positions, not dense
    a = z.clone()
    a[:, 5:, 3] = 1.0  # only effective (a carried code): not dead, dense among effective codes
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False  # position 0 masked: latent 2's firing there does not count
    s = Sparsity(F, dense_threshold=0.1)
    s.update(batch(mask), out(z, a))
    r = s.compute()
    n = B * (T - 1)
    assert r["n_tokens"] == n
    assert r["l0"] == pytest.approx((n + 1 + 4) / n)
    assert r["l1"] == pytest.approx((n + 2 + 0.5 * 4) / n)
    assert r["l0_effective"] == pytest.approx((n + 1 + 4 + 2 * 45) / n)
    assert r["dead_fraction"] == pytest.approx(1 / 5)  # latent 4 only
    assert r["dense_fraction"] == pytest.approx(1 / 5) and r["dense_fraction_effective"] == pytest.approx(2 / 5)
    assert r["freq_histogram"]["never"] == 2 and r["freq_histogram_effective"]["never"] == 1


def test_firing_histogram_bins_log10_frequency():
    h = firing_histogram(torch.tensor([0.0, 1.0, 0.5, 1e-3, 1e-9]))
    assert h["log10_edges"] == LOG10_FREQ_EDGES.tolist() and h["never"] == 1 and sum(h["counts"]) == 4
    counts = dict(zip(h["log10_edges"], h["counts"]))
    assert counts[-0.5] == 2  # 1.0 and 0.5: the last bin includes 0
    assert counts[-3.0] == 1 and counts[-8.0] == 1  # 1e-9 is clipped into the first bin
