"""The splice test on a tiny random Llama whose output head is sharpened, fed its own greedy text,
so the clean LM predicts well and any damage at the hook shows in the loss."""

import pytest
import torch

from ctxsae.cache.dataset import Windows
from ctxsae.extract.activations import Extractor
from ctxsae.extract.lm import load_tiny
from ctxsae.metrics.downstream import ABLATIONS, SPLICE_ONLY, Downstream, ce_recovered
from ctxsae.models.topk import TopKConfig, TopKSAE

D = 64


@pytest.fixture(scope="module")
def setup():
    lm = load_tiny(n_layers=2, d_model=D, n_heads=4, seed=0)
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(50)
        ids = torch.randint(0, 256, (4, 1), generator=torch.Generator().manual_seed(0))
        for _ in range(23):
            ids = torch.cat([ids, lm.model(ids).logits[:, -1:].argmax(-1)], dim=1)
    extractor = Extractor(lm, 0, "resid_post")
    doc_start = torch.zeros(ids.shape, dtype=torch.bool)
    doc_start[:, 0] = True
    mask = ~doc_start
    acts = extractor(ids)
    batch = Windows(acts, ids, doc_start, mask)
    return extractor, batch, acts[mask].mean(0)


def sae_with(W_enc=None, W_dec=None, b_dec=None, scale=0.5):
    """A TopK SAE (k = d_in) with the given weights; act_scale 0.5 exercises (de)normalisation exactly."""
    sae = TopKSAE(TopKConfig(d_in=D, d_sae=2 * D, k=D))
    with torch.no_grad():
        sae.act_scale.fill_(scale)
        sae.b_enc.zero_()
        sae.W_enc.copy_(W_enc if W_enc is not None else sae.W_enc)
        sae.W_dec.copy_(W_dec if W_dec is not None else sae.W_dec)
        sae.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(D))
    return sae


def identity_sae():
    eye = torch.eye(D)  # codes relu(x), relu(-x); decoder +I, -I: x_hat = x exactly
    return sae_with(torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0))


def run(setup, sae):
    extractor, batch, mean = setup
    d = Downstream(extractor.logits, sae, mean)
    d.update(batch)
    return d.compute()


def test_perfect_reconstruction_recovers_all_of_the_loss(setup):
    r = run(setup, identity_sae())
    assert r["ce_zero"] > r["ce_clean"] + 1 and r["ce_mean"] > r["ce_clean"] + 1  # the ablations really hurt
    assert r["ce_spliced"] == pytest.approx(r["ce_clean"], abs=1e-5)
    assert r["ce_recovered_zero"] == pytest.approx(1, abs=1e-5) and r["ce_recovered_mean"] == pytest.approx(1, abs=1e-5)
    assert r["kl_spliced"] == pytest.approx(0, abs=1e-5) and r["kl_zero"] > 0.5
    assert r["n_tokens"] == 4 * 22  # 23 kept positions per window, the last has no next token


def test_zero_reconstruction_is_the_zero_ablation_and_the_mean_the_mean_ablation(setup):
    r = run(setup, sae_with(W_dec=torch.zeros(2 * D, D)))
    assert r["ce_spliced"] == pytest.approx(r["ce_zero"], abs=1e-6) and r["ce_recovered_zero"] == pytest.approx(0, abs=1e-6)
    mean = setup[-1]
    r = run(setup, sae_with(W_dec=torch.zeros(2 * D, D), b_dec=mean * 0.5))
    assert r["ce_recovered_mean"] == pytest.approx(0, abs=1e-4) and r["kl_mean"] == pytest.approx(r["kl_spliced"], abs=1e-4)


def test_a_garbage_reconstruction_raises_the_loss(setup):
    torch.manual_seed(0)
    r = run(setup, sae_with(W_dec=5 * torch.randn(2 * D, D), b_dec=5 * torch.randn(D)))
    assert r["ce_spliced"] > r["ce_clean"] + 1 and r["kl_spliced"] > 1 and r["ce_recovered_zero"] < 0.5


def test_the_splice_changes_the_lm_from_the_patched_positions_on_only(setup):
    extractor, batch, _ = setup
    ids = batch.tokens_BT
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    keep[:, 10:] = True
    clean = extractor.logits(ids)
    patched = extractor.logits(ids, lambda h: torch.where(keep[..., None], -h, h))
    assert torch.equal(patched[:, :10], clean[:, :10])
    assert (patched[:, 10:] - clean[:, 10:]).abs().amax() > 1


def test_ce_recovered_formula():
    assert ce_recovered(5.0, 3.0, 1.0) == 0.5 and ce_recovered(5.0, 5.0, 1.0) == 0.0
    assert ce_recovered(1.0, 2.0, 1.0) != ce_recovered(1.0, 2.0, 1.0)  # no gap: nan


def test_a_splice_only_pass_with_shared_ablation_sums_gives_the_full_figures(setup):
    extractor, batch, mean = setup
    first_sae, second_sae = identity_sae(), sae_with(W_dec=torch.zeros(2 * D, D))
    full = Downstream(extractor.logits, first_sae, mean)
    full.update(batch)
    baseline = full.sums(ABLATIONS)
    alone, shared = Downstream(extractor.logits, second_sae, mean), Downstream(extractor.logits, second_sae, mean, SPLICE_ONLY)
    for d in (alone, shared):
        d.update(batch)
    assert shared.compute(baseline) == pytest.approx(alone.compute(), rel=1e-6)
    with pytest.raises(ValueError, match="not the same windows"):
        shared.compute(baseline | {"n": baseline["n"] + 1})
