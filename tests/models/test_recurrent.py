"""RecurrentSAE: the contextual rules (causal, document resets, switching off, attribution), and what it buys on synthetic data."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ctxsae.data.synthetic import SyntheticConfig, generate
from ctxsae.metrics.basic import fvu, l0
from ctxsae.models import build_sae
from ctxsae.models.base import window_starts
from ctxsae.models.recurrent import RecurrentConfig, RecurrentSAE
from ctxsae.models.topk import TopKConfig, TopKSAE, decode_masked

D, F, K, B, T = 32, 96, 6, 3, 24


def mixed_sae(dtype=torch.float64) -> RecurrentSAE:
    """Context open: a third of the latents hold exactly, a third decay, a third are token latents."""
    torch.manual_seed(0)
    sae = RecurrentSAE(RecurrentConfig(d_in=D, d_sae=F, k=K)).to(dtype).eval()
    with torch.no_grad():
        sae.retention_raw.copy_(torch.tensor([1.0, 0.7, 0.0]).repeat(F // 3) / sae.cfg.retention_speed)
        sae.b_enc.fill_(-0.5)  # fewer than K positive targets at some positions: resets must happen
    return sae


def identity_sae(k: int, retention: float) -> RecurrentSAE:
    """d_sae = d_in and latent j reads and writes basis direction j: codes are easy to predict."""
    sae = RecurrentSAE(RecurrentConfig(d_in=D, d_sae=D, k=k, drop_below=0.1)).double().eval()
    with torch.no_grad():
        sae.W_dec.copy_(torch.eye(D))
        sae.W_enc.copy_(torch.eye(D))
        sae.retention_raw.fill_(retention / sae.cfg.retention_speed)
    return sae


def windows(dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g, dtype=dtype) * 2


def test_config_builds_the_model():
    sae = build_sae(OmegaConf.structured(RecurrentConfig(d_in=D, d_sae=F, k=K, retention_init=0.25)))
    assert isinstance(sae, RecurrentSAE) and sae.cfg.k == K and torch.allclose(sae.retention(), torch.tensor(0.25))


def test_save_and_load_round_trip(round_trip, tmp_path):
    sae = mixed_sae(torch.float32)
    round_trip(sae, windows(torch.float32), tmp_path / "sae.safetensors")


def test_strictly_causal(rules):
    sae, x = mixed_sae(), windows()
    rules.strictly_causal(sae, x)


def test_document_start_resets_the_state(rules):
    sae, x = mixed_sae(), windows()
    rules.nothing_carried_into_a_document_start(sae, x)


def test_attribution_sums_to_the_effective_code():
    sae, x = mixed_sae(torch.float32), windows(torch.float32)
    out = sae(x, window_starts(B, T))
    b, t, i = out.effective_codes.nonzero(as_tuple=True)
    longest = 0
    for j in range(0, len(b), 7):
        events = sae.attribute(out, int(b[j]), int(t[j]), int(i[j]))
        assert all(s <= int(t[j]) for s, _ in events)
        assert sum(c for _, c in events) == pytest.approx(out.effective_codes[b[j], t[j], i[j]].item(), abs=1e-5)
        longest = max(longest, len(events))
    assert longest >= 3  # runs with onsets and adjustments were attributed, not just same-position codes


def test_diffs_switch_a_held_latent_off():
    sae = identity_sae(k=2, retention=0.0)
    with torch.no_grad():
        sae.retention_raw[0] = 1.0  # latent 0 holds exactly (lambda clamps at 1); the others are token latents
    x = torch.zeros(1, 8, D, dtype=torch.float64)
    x[0, :4, 0] = 3.0  # latent 0 on for 4 positions
    x[0, :, 1] = 1.0  # a second latent, re-sent every position (a token latent)
    out = sae(x, window_starts(1, 8))
    a0, z0 = out.effective_codes[0, :, 0], out.codes[0, :, 0]
    assert torch.equal(a0[:4], torch.full((4,), 3.0, dtype=torch.float64))
    assert z0[0] == 3.0 and torch.all(z0[1:4] == 0)  # one onset, then held for free
    assert z0[4] == -3.0 and torch.all(a0[4:] == 0)  # a negative code switches it off, to exactly 0
    assert torch.allclose(out.reconstruction, x)


def test_decayed_values_are_dropped_to_exact_zero():
    sae = identity_sae(k=1, retention=0.5)
    x = torch.zeros(1, 8, D, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    x[0, 1:, 1] = torch.arange(5.0, 12.0)  # takes the only code from position 1 on: latent 0 is left alone
    a0 = sae(x, window_starts(1, 8)).effective_codes[0, :, 0]
    # 1, 1/2, 1/4, 1/8 survive (>= 0.1 of the set value); 1/16 would not, so it is exactly 0.
    assert torch.equal(a0, torch.tensor([1, 0.5, 0.25, 0.125, 0, 0, 0, 0], dtype=torch.float64))


def test_starts_closed_as_topk():
    torch.manual_seed(0)
    sae = RecurrentSAE(RecurrentConfig(d_in=D, d_sae=F, k=K))
    topk = TopKSAE(TopKConfig(d_in=D, d_sae=F, k=K))
    topk.load_state_dict({n: p for n, p in sae.state_dict().items() if n != "retention_raw"})
    x = windows(torch.float32)
    out, ref = sae(x, window_starts(B, T)), topk(x, window_starts(B, T))
    assert torch.equal(out.codes, ref.codes) and torch.equal(out.effective_codes, ref.codes)
    assert torch.allclose(out.reconstruction, ref.reconstruction, atol=1e-5)
    stats = sae.context_stats(out)
    assert stats["context_energy_share"] == 0 and stats["carried_fraction"] == 0
    assert stats["context_params"] == F


def test_closed_context_still_learns_whether_to_open():
    """At lambda = 0 the retention gradient says whether holding the previous value would have helped."""
    sae = identity_sae(k=1, retention=0.0)
    x = torch.zeros(2, 2, D, dtype=torch.float64)
    x[:, 1, 1] = 5.0  # latent 1 takes the only code at position 1
    x[0, :, 0] = 3.0  # window 0: latent 0 persists but is not re-sent -> holding would help
    x[1, 0, 2], x[1, 1, 2] = 3.0, -1.0  # window 1: latent 2 is gone at position 1 -> holding would hurt
    out = sae.train()(x, window_starts(2, 2))
    (out.reconstruction - x).pow(2).sum().backward()
    g = sae.retention_raw.grad
    assert g[0] < 0 and g[2] > 0 and torch.all(g[3:] == 0)


# -- on synthetic data with a known answer ---------------------------------------------------------
# Figures measured with these settings (data seeds 0 / 1):
#   region features:    recurrent k=4 FVU 0.324 / 0.313, TopK k=6 0.351 / 0.337, TopK k=4 0.422
#   no region features: recurrent k=4 FVU 0.199, TopK k=4 0.197


def fit_and_score(fit, sae, region: bool) -> tuple[float, dict[str, float]]:
    cfg = SyntheticConfig(n_windows=384, region_features=region, seed=0)
    data, held = generate(cfg, 0, 256), generate(cfg, 256, 384)
    fit(sae, data.x_NTD, data.doc_start_NT, steps=200)
    sae.eval()
    with torch.no_grad():
        out = sae(held.x_NTD, held.doc_start_NT)
    stats = sae.context_stats(out) if isinstance(sae, RecurrentSAE) else {}
    return fvu(held.x_NTD, out.reconstruction).item(), stats | {"l0": l0(out.codes).item()}


@pytest.mark.usefixtures("single_thread")
def test_region_features_cost_fewer_codes_than_topk(fit):
    torch.manual_seed(0)
    rec, stats = fit_and_score(fit, RecurrentSAE(RecurrentConfig(d_in=64, d_sae=128, k=4)), region=True)
    torch.manual_seed(0)
    topk6, _ = fit_and_score(fit, TopKSAE(TopKConfig(d_in=64, d_sae=128, k=6)), region=True)
    torch.manual_seed(0)
    topk4, _ = fit_and_score(fit, TopKSAE(TopKConfig(d_in=64, d_sae=128, k=4)), region=True)
    assert stats["l0"] <= 4
    assert rec < topk6  # 4 novel codes per token reconstruct better than TopK's 6
    assert rec < 0.85 * topk4
    assert stats["context_energy_share"] > 0.2 and stats["carried_fraction"] > 0.3  # because context carries


@pytest.mark.usefixtures("single_thread")
def test_without_region_features_it_is_no_worse_than_topk(fit):
    torch.manual_seed(0)
    rec, stats = fit_and_score(fit, RecurrentSAE(RecurrentConfig(d_in=64, d_sae=128, k=4)), region=False)
    torch.manual_seed(0)
    topk, _ = fit_and_score(fit, TopKSAE(TopKConfig(d_in=64, d_sae=128, k=4)), region=False)
    assert rec < topk + 0.02
    assert stats["context_energy_share"] < 0.05  # nothing to carry, and context stayed (nearly) shut


def test_fixed_retention_stays_where_it_was_set(fit):
    sae = RecurrentSAE(RecurrentConfig(d_in=D, d_sae=F, k=K, retention_init=0.9, learn_retention=False))
    x = torch.randn(32, T, D, generator=torch.Generator().manual_seed(3))
    before = sae.retention().detach().clone()
    fit(sae, x, steps=5, batch_windows=8)
    assert torch.equal(sae.retention(), before) and torch.allclose(before, torch.tensor(0.9))
    assert not sae.retention_raw.requires_grad


def reference_forward(sae: RecurrentSAE, x_BTD, doc_start_BT):
    """The step loop as first written, one autograd graph through every step: the definition the fast path must match."""
    B, T, _ = x_BTD.shape
    pre_BTF = sae.pre_acts(x_BTD)
    u_TBF = pre_BTF.relu().transpose(0, 1).contiguous()
    carry_TB1 = ~doc_start_BT.T[..., None]
    carry_TB1[0] = False
    lam_TBF = carry_TB1 * sae.retention()
    a_BF = u_TBF.new_zeros(B, sae.d_sae)
    age_BF = torch.zeros_like(a_BF)
    held, chosen, effective = [], [], []
    for u_BF, lam_BF in zip(u_TBF.unbind(0), lam_TBF.unbind(0)):
        with torch.no_grad():
            age_BF = age_BF * lam_BF
            drop_BF = age_BF < sae.cfg.drop_below
        h_BF = (lam_BF - (lam_BF * drop_BF).detach()) * a_BF
        with torch.no_grad():
            diff_BF = u_BF - h_BF
            idx_BK = diff_BF.abs().topk(sae.cfg.k, dim=-1, sorted=False).indices
            chosen_BF = torch.zeros_like(diff_BF, dtype=torch.bool).scatter_(-1, idx_BK, True) & (diff_BF != 0)
            age_BF = torch.where(chosen_BF, 1.0, age_BF.masked_fill(drop_BF, 0.0))
        a_BF = torch.where(chosen_BF, u_BF, h_BF)
        held.append(h_BF)
        chosen.append(chosen_BF)
        effective.append(a_BF)
    a_TBF = torch.stack(effective)
    z_TBF = torch.where(torch.stack(chosen), u_TBF - torch.stack(held), 0.0)
    active_TBF = a_TBF != 0
    carriable_TBF = torch.zeros_like(active_TBF)
    carriable_TBF[1:] = active_TBF[:-1] & carry_TB1[1:]
    recon_TBD = decode_masked(sae.W_dec, a_TBF, active_TBF | carriable_TBF) + sae.b_dec
    return z_TBF.transpose(0, 1), a_TBF.transpose(0, 1), recon_TBD.transpose(0, 1), pre_BTF


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("codes_in_loss", [True, False])
@pytest.mark.parametrize("drop_below", [0.1, 0.0, 0.6])
def test_fast_step_loop_matches_the_reference_loop_exactly(dtype, codes_in_loss, drop_below, device):
    """Values bit for bit, gradients (of the reconstruction, the codes unless left out as a TopK loss leaves
    them, and AuxK's pre-activations) to rounding; with the drop rule off (0.0: only document starts
    cut a held value) and acting after one step of the decaying latents (0.6)."""
    sae, x = mixed_sae(dtype).train().to(device), windows(dtype).to(device)
    sae.cfg.drop_below = drop_below
    with torch.no_grad():
        sae.retention_raw[1::3] = 0.95 / sae.cfg.retention_speed  # decays slowly enough for the drop rule to act mid-run
    doc_start = torch.zeros(B, T, dtype=torch.bool, device=device)
    doc_start[:, 0] = doc_start[0, 9] = doc_start[2, 17] = True
    target, weights = torch.randn_like(x), torch.randn(B, T, F, dtype=dtype, device=device)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.retention_raw]

    def loss(z, a, recon, pre):
        codes = (weights * z).sum() if codes_in_loss else 0.0  # left out, z receives no gradient (None)
        return (recon - target).pow(2).sum() + codes + (weights * pre.relu()).mean()

    out = sae(x, doc_start)
    grads = torch.autograd.grad(loss(*out[:3], out.pre_acts), params)
    ref = reference_forward(sae, x, doc_start)
    ref_grads = torch.autograd.grad(loss(*ref), params)
    for a, b in zip(out[:3], ref):
        assert torch.equal(a, b)
    assert torch.equal(out.pre_acts, ref[3])
    assert out.codes.ne(0).any() and out.effective_codes.ne(out.codes).any()  # something was held
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}  # sums in another order
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)
    assert grads[-1].ne(0).any()  # the retention learns
