"""RegionSAE: the running mean, the hold rule, the contextual rules, TopK when it has no region latents, and what
it buys on synthetic data whose region features last the whole document."""

from __future__ import annotations

import pytest
import torch

from ctxsae.errors import UserError
from ctxsae.metrics.basic import l0
from ctxsae.models.base import window_starts
from ctxsae.models.region import RegionConfig, RegionSAE, running_mean
from ctxsae.models.topk import TopKConfig, TopKSAE

D, F, K, R, B, T = 32, 96, 4, 8, 3, 24


def region_sae(d_region: int = R, resend_above: float = 0.3) -> RegionSAE:
    torch.manual_seed(0)
    return RegionSAE(RegionConfig(d_in=D, d_sae=F, k=K, d_region=d_region, resend_above=resend_above)).double().eval()


def windows(seed: int = 1) -> torch.Tensor:
    """Windows with a per-window offset (what the region latents are for) plus per-token noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, D, generator=g, dtype=torch.float64) * 2 + torch.randn(B, T, D, generator=g, dtype=torch.float64)


def with_documents(starts: dict[int, list[int]]) -> torch.Tensor:
    doc_start = window_starts(B, T)
    for b, ts in starts.items():
        doc_start[b, ts] = True
    return doc_start


def test_running_mean_restarts_at_document_starts():
    x, doc_start = windows(), with_documents({1: [5, 6], 2: [20]})
    expected = torch.empty_like(x)
    for b in range(B):
        start = 0
        for t in range(T):
            start = t if doc_start[b, t] else start
            expected[b, t] = x[b, start : t + 1].mean(0)
    torch.testing.assert_close(running_mean(x, doc_start), expected)


def test_a_region_latent_is_resent_exactly_when_its_target_moved_by_more_than_resend_above():
    sae, x, doc_start = region_sae(), windows(), with_documents({1: [9]})
    out = sae(x, doc_start)
    n_token = F - R
    with torch.no_grad():
        rho = (running_mean(x, doc_start) @ sae.W_enc[:, n_token:] + (sae.b_enc - sae.b_dec @ sae.W_enc)[n_token:]).relu()
    held = torch.zeros(B, R, dtype=torch.float64)
    for t in range(T):
        held[doc_start[:, t]] = 0.0
        previous = held.clone()
        send = (rho[:, t] - held).abs() > 0.3 * held
        held = torch.where(send, rho[:, t], held)
        torch.testing.assert_close(out.effective_codes[:, t, n_token:], held, rtol=0, atol=0)
        torch.testing.assert_close(out.codes[:, t, n_token:], torch.where(send, held - previous, 0.0), rtol=0, atol=0)
    sends, holds = (out.codes[..., n_token:] != 0).sum(), ((out.effective_codes[..., n_token:] != 0) & (out.codes[..., n_token:] == 0)).sum()
    assert sends > 0 and holds > sends  # the window offset makes most targets stable: held far more often than sent


def test_novel_codes_are_the_token_codes_and_every_send():
    sae, x = region_sae(), windows()
    out = sae(x, window_starts(B, T))
    token, region = out.codes[..., : F - R], out.codes[..., F - R :]
    assert torch.equal((token != 0).sum(-1), torch.full((B, T), K))
    assert l0(out.codes).item() == pytest.approx(K + (region != 0).sum().item() / (B * T))
    assert torch.equal(out.effective_codes[..., : F - R], token)  # token latents hold nothing


def test_without_region_latents_it_is_topk():
    torch.manual_seed(0)
    sae = RegionSAE(RegionConfig(d_in=D, d_sae=F, k=K, d_region=0))
    torch.manual_seed(0)
    topk = TopKSAE(TopKConfig(d_in=D, d_sae=F, k=K))
    x = windows().float()
    out, ref = sae(x, window_starts(B, T)), topk(x, window_starts(B, T))
    for a, b in zip(out[:4], ref[:4]):
        assert torch.equal(a, b)
    assert sae.context_stats(out)["context_energy_share"] == 0


def test_too_few_token_latents_is_one_line_naming_the_fix():
    with pytest.raises(UserError, match="lower model.d_region or model.k"):
        RegionSAE(RegionConfig(d_in=8, d_sae=16, k=4, d_region=14))


def test_strictly_causal(rules):
    rules.strictly_causal(region_sae(), windows())


def test_document_start_resets_the_region(rules):
    rules.nothing_carried_into_a_document_start(region_sae(), windows())


def test_attribution_sums_to_the_effective_code():
    sae, x = region_sae(), windows()
    out = sae(x, window_starts(B, T))
    longest = 0
    for b, t, i in out.effective_codes[..., F - R :].nonzero().tolist():
        events = sae.attribute(out, b, t, F - R + i)
        assert all(s <= t for s, _ in events)
        assert sum(c for _, c in events) == pytest.approx(out.effective_codes[b, t, F - R + i].item(), abs=1e-9)
        longest = max(longest, len(events))
    assert longest >= 2  # held values made of an onset and later changes
    token = out.codes[..., : F - R].nonzero()[0].tolist()
    assert sae.attribute(out, token[0], token[1], token[2]) == [(token[1], out.codes[tuple(token)].item())]


def test_a_held_value_trains_the_target_it_was_sent_from():
    """The error at the last position reaches the encoder column of every region latent active there, also
    where its value was sent earlier and is only held at the last position; it reaches no other region latent."""
    sae, x = region_sae().train(), windows()
    out = sae(x, window_starts(B, T))
    active = out.effective_codes[:, -1, F - R :] != 0
    held_only = active & (out.codes[:, -1, F - R :] == 0)
    assert held_only.any()
    (out.reconstruction[:, -1] - x[:, -1]).pow(2).sum().backward()
    trained = sae.W_enc.grad[:, F - R :].abs().sum(0) > 0
    assert torch.equal(trained, active.any(0)) and trained[held_only.any(0)].all()


# -- on synthetic data whose region features last the whole window -------------------------------------------
# The region SAE has TopK's 128 token latents plus 8 region latents. Figures measured with these settings:
#   region features:    region k=4 FVU 0.305 at novel L0 4.36 (0.36 sends per position), TopK k=4 0.430, k=6 0.369
#   no region features: region k=4 FVU 0.203 at novel L0 4.39, TopK k=4 0.197: its 8 latents find nothing to hold,
#                       yet their small, fluctuating targets still cost ~0.4 sends per position.

REGION = dict(d_in=64, d_sae=136, k=4, d_region=8)


def region() -> RegionSAE:
    return RegionSAE(RegionConfig(**REGION))


def topk(k: int):
    return lambda: TopKSAE(TopKConfig(d_in=64, d_sae=128, k=k))


@pytest.mark.usefixtures("single_thread")
def test_document_long_features_cost_a_send_not_a_code_per_token(score_on_regions):
    fvu_region, l0_region = score_on_regions(region)
    fvu_topk4, _ = score_on_regions(topk(4))
    fvu_topk6, _ = score_on_regions(topk(6))
    assert l0_region < 5  # 4 token codes and under one send per position
    assert fvu_region < fvu_topk6 and fvu_region < 0.8 * fvu_topk4


@pytest.mark.usefixtures("single_thread")
def test_without_region_features_it_is_no_worse_than_topk(score_on_regions):
    fvu_region, _ = score_on_regions(region, region=False)
    fvu_topk4, _ = score_on_regions(topk(4), region=False)
    assert fvu_region < fvu_topk4 + 0.02
