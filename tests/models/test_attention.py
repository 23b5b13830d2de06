"""AttentionSAE: the contextual rules (causal, document resets, switching off, attribution), and what it buys on synthetic data."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ctxsae.data.synthetic import SyntheticConfig, generate
from ctxsae.metrics.basic import fvu, l0
from ctxsae.models import build_sae
from ctxsae.models.attention import AttentionConfig, AttentionSAE, spread
from ctxsae.models.base import window_starts
from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.train.objective import LossConfig

D, F, K, B, T = 32, 96, 4, 3, 24


def open_sae(dtype=torch.float64, value_rank: int = 0, query_from_past: bool = False) -> AttentionSAE:
    """Context open: half the latents carry, heads read content and recency, nothing at default init."""
    torch.manual_seed(0)
    cfg = AttentionConfig(d_in=D, d_sae=F, k=K, k_values=8, n_heads=2, d_head=4, n_attend=4, value_rank=value_rank,
                          query_from_past=query_from_past)
    sae = AttentionSAE(cfg).to(dtype).eval()
    with torch.no_grad():
        sae.carry_logit.copy_(torch.tensor([1.0, -1.0]).repeat(F // 2))
        sae.W_q.normal_(0, 0.3)
        sae.head_logit.normal_()
        sae.slope.uniform_(0, 0.5)
        if value_rank:
            sae.value_B.normal_(0, 0.1)
    return sae


def windows(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    x[:, :, :4] += 2.0  # a few directions persist: the context has something to carry
    return x


def reference_context(sae: AttentionSAE, w_BHTR, pos_BHTR, uv_BTK, ui_BTK):
    """``AttentionSAE.context`` as first written: dense [B H T, F] sums for p, every candidate through
    ``torch.where``, and per-position scatters into c. The definition the fast path must match."""
    B, H, T, R = w_BHTR.shape
    Kv, Fs = ui_BTK.shape[-1], sae.d_sae
    at_pos = pos_BHTR.reshape(B, -1, 1).expand(-1, -1, Kv)
    feat_BHTRK = ui_BTK.gather(1, at_pos).view(B, H, T, R, Kv)
    val_BHTRK = uv_BTK.gather(1, at_pos).view(B, H, T, R, Kv)
    w_BHTRK = w_BHTR[..., None] * (val_BHTRK > 0)
    if sae.value_A is not None:
        u_BTF = torch.zeros(B, T, Fs, dtype=uv_BTK.dtype).scatter(-1, ui_BTK, uv_BTK)
        mix_BTF = (u_BTF @ sae.value_A) @ sae.value_B
        at_flat = (pos_BHTR[..., None] * Fs + feat_BHTRK).reshape(B, -1)
        val_BHTRK = val_BHTRK + mix_BTF.reshape(B, -1).gather(1, at_flat).view_as(val_BHTRK)
    idx_NC, w_NC = feat_BHTRK.reshape(B * H * T, -1), w_BHTRK.reshape(B * H * T, -1)
    p_BHTRK = w_NC.new_zeros(B * H * T, Fs).scatter_add(1, idx_NC, w_NC).gather(1, idx_NC).view_as(w_BHTRK)
    carry_BHTRK = (p_BHTRK > 0.5) & (w_BHTRK > 0)
    g_BHTRK = sae.gain().gather(1, feat_BHTRK.transpose(0, 1).reshape(H, -1)).view(H, B, T, R, Kv).transpose(0, 1)
    contrib_BHTRK = torch.where(carry_BHTRK, g_BHTRK * w_BHTRK * val_BHTRK / p_BHTRK.clamp_min(0.5), 0.0)
    feat_BTC = feat_BHTRK.transpose(1, 2).reshape(B, T, -1)
    c_BTF = uv_BTK.new_zeros(B, T, Fs).scatter_add(-1, feat_BTC, contrib_BHTRK.transpose(1, 2).reshape(B, T, -1))
    carried_BTF = torch.zeros_like(c_BTF).scatter_add(-1, feat_BTC, carry_BHTRK.transpose(1, 2).reshape(B, T, -1).to(c_BTF.dtype)) > 0
    return c_BTF, carried_BTF, feat_BHTRK, contrib_BHTRK


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value_rank", [0, 3])
@pytest.mark.parametrize("closed", [False, True])
def test_context_matches_the_reference_form_exactly(dtype, value_rank, closed):
    """Values and gradients bit for bit: the fast path sums the same terms in the same order (with every
    carry closed it skips the weights' and values' graph: their gradient must still be the reference's 0)."""
    sae = open_sae(dtype, value_rank).train()
    if closed:
        torch.nn.init.constant_(sae.carry_logit, -0.1)
    g = torch.Generator().manual_seed(2)
    Bc, H, Tc, R, Kv = 4, sae.cfg.n_heads, 40, 5, 12
    uv_BTK = (torch.rand(Bc, Tc, Kv, generator=g, dtype=dtype) - 0.2).relu().requires_grad_()  # some values 0: off
    ui_BTK = torch.stack([torch.randperm(F // 4, generator=g)[:Kv] for _ in range(Bc * Tc)]).view(Bc, Tc, Kv)  # features recur
    pos_BHTR = torch.randint(0, Tc, (Bc, H, Tc, R), generator=g)
    w_BHTR = torch.rand(Bc, H, Tc, R, generator=g, dtype=dtype).pow(3)
    w_BHTR = (w_BHTR / w_BHTR.sum(-1, keepdim=True)).requires_grad_()  # weights of 0 (masked slots) included below
    with torch.no_grad():
        w_BHTR[:, :, :3, -2:] = 0
    params = [p for p in (sae.head_logit, sae.carry_logit, sae.value_A, sae.value_B) if p is not None]
    def fast_context(*args):  # the carried candidates' contributions spread over all candidates, as the reference has them
        c, carried, feat, carried_M, contrib_M = sae.context(*args)
        return c, carried, feat, spread(carried_M, contrib_M, feat)

    grads = []
    for context in (fast_context, lambda *a: reference_context(sae, *a)):
        c, carried, feat, contrib = context(w_BHTR, pos_BHTR, uv_BTK, ui_BTK)
        weights = torch.randn(c.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
        loss = (weights * c).sum() + contrib.pow(2).sum()
        grads.append(([c, carried, feat, contrib], torch.autograd.grad(loss, [w_BHTR, uv_BTK, *params])))
    (fast, fast_grads), (ref, ref_grads) = grads
    assert ref[1].any() and not ref[1].all()  # some cells carried, not all
    for a, b in zip(fast + list(fast_grads), ref + list(ref_grads)):
        assert torch.equal(a, b)


def test_config_builds_the_model():
    sae = build_sae(OmegaConf.structured(AttentionConfig(d_in=D, d_sae=F, k=K, n_heads=2, d_head=4)))
    assert isinstance(sae, AttentionSAE) and sae.cfg.k == K and sae.W_q.shape == (D, 8)


@pytest.mark.parametrize("value_rank, query_from_past", [(0, False), (3, False), (0, True)])
def test_strictly_causal(value_rank, query_from_past, rules):
    sae, x = open_sae(value_rank=value_rank, query_from_past=query_from_past), windows()
    assert (sae(x, window_starts(B, T)).aux["context"] != 0).any()
    rules.strictly_causal(sae, x)


@pytest.mark.parametrize("query_from_past", [False, True])
def test_document_start_resets_the_context(query_from_past, rules):
    sae, x = open_sae(query_from_past=query_from_past), windows()
    rules.nothing_carried_into_a_document_start(sae, x)


@pytest.mark.parametrize("query_from_past", [False, True])
def test_context_reads_x_t_only_through_the_query(query_from_past):
    """Changing x_t alone moves the context at t through the query from x_t; with the query from x_{t-1}
    the context at t is bitwise unchanged: all the decoder learns about x_t is in the novel codes."""
    sae, x = open_sae(query_from_past=query_from_past), windows()
    for t0 in (5, 17):
        x2 = x.clone()
        x2[:, t0] = torch.randn_like(x2[:, t0]) + 2.0
        c, c2 = (sae(v, window_starts(B, T)).aux["context"] for v in (x, x2))
        assert torch.equal(c[:, :t0], c2[:, :t0]) and c[:, t0].any()
        assert torch.equal(c[:, t0], c2[:, t0]) == query_from_past


def test_attribution_sums_to_the_effective_code():
    sae, x = open_sae(torch.float32), windows(torch.float32)
    out = sae(x, window_starts(B, T))
    b, t, i = out.effective_codes.nonzero(as_tuple=True)
    earlier = 0
    for j in range(0, len(b), 5):
        events = sae.attribute(out, int(b[j]), int(t[j]), int(i[j]))
        assert all(s <= int(t[j]) for s, _ in events)
        assert sum(c for _, c in events) == pytest.approx(out.effective_codes[b[j], t[j], i[j]].item(), abs=1e-5)
        earlier += any(s < int(t[j]) for s, _ in events)
    assert earlier >= 20  # carried activations were traced back to earlier positions


def test_unsent_share_counts_carried_values_never_decoded_at_their_source():
    """``carried_unsent_share`` and ``unsent_sources_per_position`` against ``attribute``: the carried
    value traced to positions s where the feature was off in a_s, over all carried value; and how many
    distinct such (s, feature) sources there are per position."""
    sae, x = open_sae(), windows()
    out = sae(x, window_starts(B, T))
    unsent = total = 0.0
    sources = set()
    for b, t, i in out.aux["context"].nonzero().tolist():
        for s, value in sae.attribute(out, b, t, i):
            if s < t:
                total += value
                if out.effective_codes[b, s, i] == 0:
                    unsent += value
                    sources.add((b, s, i))
    assert 0 < unsent < total  # both kinds occur here
    stats = sae.context_stats(out)
    assert stats["carried_unsent_share"] == pytest.approx(unsent / total, rel=1e-9)
    assert stats["unsent_sources_per_position"] == len(sources) / (B * T)


@pytest.mark.parametrize("query_from_past", [False, True])
def test_context_lets_go_when_the_query_stops_matching(query_from_past):
    """Latent 0 is carried while the query's position still shows it and is exactly 0 once it is gone, at
    no code. From the past the query learns of the end one position late: latent 0 is carried once too often."""
    cfg = AttentionConfig(d_in=D, d_sae=D, k=1, k_values=2, n_heads=1, d_head=1, n_attend=4, query_from_past=query_from_past)
    sae = AttentionSAE(cfg).double().eval()
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(D))
        sae.W_enc.copy_(torch.eye(D))
        sae.carry_logit.fill_(-1.0)
        sae.carry_logit[0] = 1.0  # only latent 0 is carried
        sae.W_q.zero_()
        sae.W_q[0, 0] = 10.0  # score(t, s) = 10 x_t[0] x_s[0]: content match on latent 0
        sae.W_k.zero_()
        sae.W_k[0, 0] = 1.0
        sae.slope.zero_()
        sae.null_logit.fill_(5.0)  # without a match the null slot wins
    x = torch.zeros(1, 8, D, dtype=torch.float64)
    x[0, :4, 0] = 3.0  # latent 0 on for 4 positions
    x[0, :, 1] = 1.0  # latent 1 on everywhere, never carried: it takes the one novel code
    out = sae(x, window_starts(1, 8))
    a0, z0 = out.effective_codes[0, :, 0], out.codes[0, :, 0]
    end = 5 if query_from_past else 4
    assert z0[0] == 3.0 and torch.all(z0[1:] == 0)  # one onset, then carried for free
    torch.testing.assert_close(a0[:end], torch.full((end,), 3.0, dtype=torch.float64))
    assert torch.all(a0[end:] == 0)  # let go: exactly 0, no reset code spent
    late = [4] if query_from_past else []  # the one position where the context still held latent 0
    exact = [t for t in range(1, 8) if t not in late]
    torch.testing.assert_close(out.reconstruction[:, exact], x[:, exact])  # at t = 0 the one code went to latent 0
    assert all(out.reconstruction[0, t, 0] == 3.0 for t in late)
    assert sae.context_stats(out)["carried_unsent_share"] == 0  # carried from where it was decoded


def test_starts_closed_as_topk():
    torch.manual_seed(0)
    sae = AttentionSAE(AttentionConfig(d_in=D, d_sae=F, k=K, k_values=8, n_heads=2, d_head=4))
    topk = TopKSAE(TopKConfig(d_in=D, d_sae=F, k=K))
    topk.load_state_dict(sae.state_dict(), strict=False)
    x = windows(torch.float32)
    out, ref = sae(x, window_starts(B, T)), topk(x, window_starts(B, T))
    assert torch.equal(out.codes, ref.codes) and torch.equal(out.effective_codes, ref.codes)
    assert torch.allclose(out.reconstruction, ref.reconstruction, atol=1e-5)
    stats = sae.context_stats(out)
    assert stats["context_energy_share"] == 0 and stats["carried_fraction"] == 0
    # W_q, W_k, b_q, k_null, null_logit, slope, pi, rho
    assert stats["context_params"] == 2 * D * 8 + 8 + 2 * 4 + 2 + 2 + 3 * F


def test_closed_carry_still_learns_whether_to_open():
    sae = AttentionSAE(AttentionConfig(d_in=D, d_sae=F, k=K, k_values=8, n_heads=2, d_head=4)).double()
    x = windows()
    out = sae(x, window_starts(B, T))
    (out.reconstruction - x).pow(2).sum().backward()
    assert sae.carry_logit.grad.abs().sum() > 0


# -- synthetic data: trained briefly through the real SAEModule -----------------------------------------


def fit_and_measure(fit, sae, cfg: SyntheticConfig, n_train: int, steps: int) -> tuple[float, float]:
    train, test = generate(cfg, 0, n_train), generate(cfg, n_train, cfg.n_windows)
    fit(sae, train.x_NTD, train.doc_start_NT, loss=LossConfig(auxk=1 / 32, dead_after_tokens=10_000), steps=steps)
    with torch.no_grad():
        out = sae(test.x_NTD, test.doc_start_NT)
    return fvu(test.x_NTD, out.reconstruction).item(), l0(out.codes).item()


def test_region_features_need_fewer_novel_codes(fit, single_thread):
    """Measured (seeds 0, 1): attention k=3 FVU 0.28, 0.29 against TopK k=4 0.37, 0.37 (TopK k=3: 0.43)."""
    cfg = SyntheticConfig(d_in=64, n_windows=384, n_ctx=64, region_features=True)
    torch.manual_seed(0)
    fvu_topk, _ = fit_and_measure(fit, TopKSAE(TopKConfig(d_in=64, d_sae=128, k=4)), cfg, 256, 300)
    torch.manual_seed(0)
    attn = AttentionSAE(AttentionConfig(d_in=64, d_sae=128, k=3, k_values=8, n_heads=4, d_head=8, n_attend=8))
    fvu_attn, l0_attn = fit_and_measure(fit, attn, cfg, 256, 300)
    assert l0_attn == 3
    assert fvu_attn < fvu_topk - 0.05


def test_without_region_features_no_worse_than_topk(fit, single_thread):
    """Measured (seeds 0, 1): attention k=3 FVU 0.292, 0.292 against TopK k=3 0.288, 0.291."""
    cfg = SyntheticConfig(d_in=64, n_windows=256, n_ctx=32, region_features=False)
    torch.manual_seed(0)
    fvu_topk, _ = fit_and_measure(fit, TopKSAE(TopKConfig(d_in=64, d_sae=128, k=3)), cfg, 128, 200)
    torch.manual_seed(0)
    attn = AttentionSAE(AttentionConfig(d_in=64, d_sae=128, k=3, k_values=8, n_heads=4, d_head=8, n_attend=8))
    fvu_attn, _ = fit_and_measure(fit, attn, cfg, 128, 200)
    assert fvu_attn < fvu_topk + 0.02
