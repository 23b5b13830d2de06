import pytest
import torch

from ctxsae.data.windows import TokenLabels
from ctxsae.metrics.persistence import PersistenceOracle, RegionMeanBound, held_codes
from ctxsae.models.base import SAEOutput
from ctxsae.cache.dataset import Windows


def window(x_TD, kind=None, doc_start_at=(0,), mask_first=False):
    T = x_TD.shape[0]
    doc_start = torch.zeros(1, T, dtype=torch.bool)
    doc_start[0, list(doc_start_at)] = True
    mask = torch.ones(1, T, dtype=torch.bool)
    mask[0, 0] = not mask_first
    labels = None
    if kind is not None:
        k = torch.tensor([kind])
        labels = TokenLabels(torch.where(k >= 0, 0, -1).short(), k.short(), k.int(), ("en",), ("prose", "code"))
    return Windows(x_TD[None], torch.zeros(1, T, dtype=torch.long), doc_start, mask, labels)


# Two latents over five positions of one document: latent 0 drifts by 5%, then 14%, then stops; latent 1 holds 2.
CODES = torch.tensor([[1.0, 0.0], [1.05, 2.0], [1.2, 2.0], [0.0, 2.0], [0.0, 0.0]])


def test_hold_scheme_sends_new_changed_and_stopped_codes():
    cont = torch.tensor([[False, True, True, True, True]])
    held, sent = held_codes(CODES[None], cont, 0.1)
    assert sent[0].tolist() == [[True, False], [False, True], [True, False], [True, False], [False, True]]
    assert torch.equal(held[0], torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.2, 2.0], [0.0, 2.0], [0.0, 0.0]]))
    held, sent = held_codes(CODES[None], torch.tensor([[False, True, False, True, True]]), 0.3)  # a new stretch at t = 2
    assert sent[0, 2].tolist() == [True, True] and held[0, 1, 0] == 1.0  # 5% drift held; everything resent at the reset


def test_persistence_oracle_exact_counts_and_held_fvu():
    acc = PersistenceOracle(decode=lambda h: h.clone(), d_in=2, tolerances=(0.1, 0.3))  # identity decoder: x_hat = held codes
    z = CODES[None]  # a per-token SAE: effective codes are the codes
    acc.update(window(CODES.clone(), kind=[0, 0, 1, 1, 1]), SAEOutput(z, z, z, z, {}))
    r = acc.compute()
    assert r["positions"] == 5 and r["l0"] == 6 / 5 and r["already_active"] == 4 / 6
    assert r["l0_held_0.1"] == 5 / 5 and r["held_share_0.1"] == 5 / 6
    assert r["l0_held_0.3"] == 4 / 5 and r["held_share_0.3"] == 4 / 6
    # Stops free: only new or changed active codes count (t = 0 and 2 for latent 0 at 10%, t = 1 for latent 1).
    assert r["l0_changed_0.1"] == 3 / 5 and r["changed_share_0.1"] == 3 / 6
    assert r["l0_changed_0.3"] == 2 / 5 and r["changed_share_0.3"] == 2 / 6
    assert r["changed_share_0.3"] >= 1 - r["already_active"] - 1e-12  # only codes already active can be held
    variance = (CODES - CODES.mean(0)).pow(2).sum().item()
    assert r["fvu_held_0.1"] == pytest.approx(0.05**2 / variance, rel=1e-5)  # float32 codes  # only t = 1 is off: 1 held for 1.05
    assert r["fvu_held_0.3"] == pytest.approx((0.05**2 + 0.2**2) / variance, rel=1e-5)
    code = r["by_kind"]["code"]  # t = 2..4
    assert code["positions"] == 3 and code["l0"] == 3 / 3 and code["l0_held_0.1"] == 3 / 3 and code["l0_held_0.3"] == 2 / 3

    contextual = PersistenceOracle(decode=lambda h: h, d_in=2)
    contextual.update(window(CODES.clone()), SAEOutput(z, z.clone(), z, z, {}))
    assert contextual.compute() is None


def test_region_mean_bound_exact_values():
    # Kept positions 1..5 hold 1, 1, 1 (a prose block), then 5, 7 (a code block): mean 3, variance 32.
    x = torch.tensor([[100.0], [1.0], [1.0], [1.0], [5.0], [7.0]])
    acc = RegionMeanBound()
    acc.update(window(x, kind=[-1, 0, 0, 0, 1, 1], mask_first=True))
    r = acc.compute()
    # document: the first position predicted by the mean (error 4), then 1, 1, 1, (1+1+1+5)/4: errors 0, 0, 16, 25
    assert r["explained_document"] == pytest.approx(1 - (4 + 16 + 25) / 32)
    # block: a fresh start at the code block (error (5-3)^2), then its own mean 5: error 4
    assert r["explained_block"] == pytest.approx(1 - (4 + 4 + 4) / 32)
    assert r["explained_language"] == pytest.approx(r["explained_document"])  # one language run
    # at the code block's positions (mean 6, variance 2): first (5-6)^2, then 5 for 7
    assert r["by_kind"]["block"]["code"] == pytest.approx(1 - (1 + 4) / 2)
    unlabelled = RegionMeanBound()
    unlabelled.update(window(x, mask_first=True))
    assert set(unlabelled.compute()) == {"explained_document"}


def test_region_mean_bound_on_the_residual_exact_values():
    """Given an SAE output, the same predictor on e = x - x_hat: the FVU a free running mean of past errors takes off."""
    x = torch.tensor([[100.0], [1.0], [1.0], [1.0], [5.0], [7.0]])  # kept positions 1..5: variance 32, as above
    recon = x - torch.tensor([[0.0], [2.0], [2.0], [2.0], [-1.0], [2.0]])  # errors 2, 2, 2, -1, 2 at kept positions
    acc = RegionMeanBound()
    acc.update(window(x, mask_first=True), SAEOutput(x, x, recon, x, {}))
    r = acc.compute()
    # predicted errors: 0 (no history), 2, 2, 2, (2+2+2-1)/4 = 1.25: squared errors 4, 0, 0, 9, 0.5625 of 17 in all
    assert r["residual_explained_document"] == pytest.approx((17 - (4 + 9 + 0.5625)) / 32)
    assert r["explained_document"] == pytest.approx(1 - (4 + 16 + 25) / 32)  # the bound on x is unchanged
