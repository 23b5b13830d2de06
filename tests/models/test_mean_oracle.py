"""MeanOracleSAE: TopK at init, the contextual rules, and what the free mean buys on
synthetic data whose region features last the whole window."""

from __future__ import annotations

import pytest
import torch

from ctxsae.models.base import window_starts
from ctxsae.models.mean_oracle import MeanOracleConfig, MeanOracleSAE
from ctxsae.models.topk import TopKConfig, TopKSAE

D, F, K, B, T = 32, 96, 4, 3, 24


def windows(seed: int = 1) -> torch.Tensor:
    """Windows with a per-window offset (what the mean is for) plus per-token noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, D, generator=g) * 2 + torch.randn(B, T, D, generator=g)


def oracle(seed: int = 0) -> MeanOracleSAE:
    """An oracle whose read of the mean is open (at init it is closed: W_ctx = 0)."""
    torch.manual_seed(seed)
    sae = MeanOracleSAE(MeanOracleConfig(d_in=D, d_sae=F, k=K))
    with torch.no_grad():
        sae.W_ctx.copy_(torch.eye(D) + 0.1 * torch.randn(D, D))
    return sae


def test_closed_it_is_topk_output_for_output():
    torch.manual_seed(0)
    sae = MeanOracleSAE(MeanOracleConfig(d_in=D, d_sae=F, k=K))
    torch.manual_seed(0)
    topk = TopKSAE(TopKConfig(d_in=D, d_sae=F, k=K))
    x = windows()
    out, ref = sae(x, window_starts(B, T)), topk(x, window_starts(B, T))
    for a, b in zip(out[:4], ref[:4]):
        assert torch.equal(a, b)
    assert out.effective_codes is out.codes


def test_strictly_causal(rules):
    rules.strictly_causal(oracle(), windows())


def test_document_start_resets_the_mean(rules):
    out = rules.document_start_resets(oracle(), windows())
    assert torch.equal(out.aux["context"][:, 10], torch.zeros(B, D))  # nothing before a document's first position


def test_attribution_is_the_novel_code_and_the_mean_is_reported():
    sae, x = oracle(), windows()
    out = sae(x, window_starts(B, T))
    b, t, i = out.codes.nonzero()[0].tolist()
    assert sae.attribute(out, b, t, i) == [(t, out.codes[b, t, i].item())]
    assert sae.attribute(out, b, t, (out.codes[b, t] == 0).nonzero()[0].item()) == []
    stats = sae.context_stats(out)
    assert stats["context_params"] == D * D and 0 < stats["context_energy_share"] < 1


# -- on synthetic data whose region features last the whole window -------------------------------------------


@pytest.mark.usefixtures("single_thread")
def test_the_free_mean_explains_a_window_long_region(score_on_regions):
    """Training opens W_ctx from 0, and with the region in the mean, k = 4 codes beat TopK's 4 and 6."""
    oracle_fvu, _ = score_on_regions(lambda: MeanOracleSAE(MeanOracleConfig(d_in=64, d_sae=128, k=4)))
    topk4, _ = score_on_regions(lambda: TopKSAE(TopKConfig(d_in=64, d_sae=128, k=4)))
    topk6, _ = score_on_regions(lambda: TopKSAE(TopKConfig(d_in=64, d_sae=128, k=6)))
    assert oracle_fvu < topk6 and oracle_fvu < 0.8 * topk4
