"""DocumentMeanSAE: the strictly earlier mean, TopK at init, the contextual rules, a receiver of the codes alone replays the reconstruction,
and what the mean buys on synthetic data whose region features last the whole window."""

from __future__ import annotations

import pytest
import torch

from ctxsae.models.base import window_starts
from ctxsae.models.document_mean import DocumentMeanConfig, DocumentMeanSAE, mean_before
from ctxsae.models.mean_oracle import MeanOracleConfig, MeanOracleSAE
from ctxsae.models.topk import TopKConfig, TopKSAE, topk_relu

D, F, K, B, T = 32, 96, 4, 3, 24


def windows(seed: int = 1) -> torch.Tensor:
    """Windows with a per-window offset (what the mean is for) plus per-token noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, D, generator=g, dtype=torch.float64) * 2 + torch.randn(B, T, D, generator=g, dtype=torch.float64)


def open_sae(seed: int = 0, teacher_forcing: bool = True) -> DocumentMeanSAE:
    """A document-mean SAE in eval mode whose read of the mean is open (at init it is closed: W_ctx = 0)."""
    torch.manual_seed(seed)
    sae = DocumentMeanSAE(DocumentMeanConfig(d_in=D, d_sae=F, k=K, teacher_forcing=teacher_forcing)).double()
    with torch.no_grad():
        sae.W_ctx.copy_(torch.eye(D) + 0.1 * torch.randn(D, D))
    return sae.eval()


def with_documents() -> torch.Tensor:
    doc_start = window_starts(B, T)
    doc_start[1, [5, 6]] = doc_start[2, 20] = True
    return doc_start


def test_the_mean_is_of_the_document_strictly_before_t():
    x, doc_start = windows(), with_documents()
    m, has = mean_before(x, doc_start)
    for b in range(B):
        start = 0
        for t in range(T):
            start = t if doc_start[b, t] else start
            assert bool(has[b, t]) == (t > start)
            expected = x[b, start:t].mean(0) if t > start else torch.zeros(D, dtype=x.dtype)
            torch.testing.assert_close(m[b, t], expected)


def test_closed_it_is_topk():
    torch.manual_seed(0)
    sae = DocumentMeanSAE(DocumentMeanConfig(d_in=D, d_sae=F, k=K))
    torch.manual_seed(0)
    topk = TopKSAE(TopKConfig(d_in=D, d_sae=F, k=K))
    x = windows().float()
    ref = topk(x, window_starts(B, T))
    for mode in (sae.train, sae.eval):  # teacher-forced and from its codes
        out = mode()(x, window_starts(B, T))
        assert torch.equal(out.codes, ref.codes) and out.effective_codes is out.codes
        torch.testing.assert_close(out.reconstruction, ref.reconstruction)


@torch.no_grad()
def test_a_receiver_of_the_codes_alone_replays_the_reconstruction():
    """x_hat_t = z_t W_dec + c_t + b_dec with c_t from the mean of the x_hat already replayed: nothing else is read.
    And z_t is TopK of the pre-activations of x_t minus that c_t."""
    sae, x, doc_start = open_sae(), windows(), with_documents()
    out = sae(x, doc_start)
    for b in range(B):
        decoded = []
        for t in range(T):
            decoded = [] if doc_start[b, t] else decoded
            c = torch.stack(decoded).mean(0) @ sae.W_ctx if decoded else torch.zeros(D, dtype=x.dtype)
            x_hat = out.codes[b, t] @ sae.W_dec + c + sae.b_dec
            torch.testing.assert_close(out.reconstruction[b, t], x_hat)
            vals, idx = topk_relu(sae.pre_acts(x[b, t] - c), K)
            torch.testing.assert_close(out.codes[b, t], torch.zeros(F, dtype=x.dtype).scatter(0, idx, vals))
            decoded.append(x_hat - sae.b_dec)
    assert sae.context_stats(out)["context_energy_share"] > 0.1  # the mean does part of the work


def test_strictly_causal(rules):
    rules.strictly_causal(open_sae(), windows())


def test_document_start_resets_the_mean(rules):
    out = rules.document_start_resets(open_sae(), windows())
    assert torch.equal(out.aux["context"][:, 10], torch.zeros(B, D, dtype=torch.float64))


def test_teacher_forcing_trains_on_the_activations_mean_and_eval_mode_decodes_from_codes():
    """In training mode the model is the mean oracle (same weights, same outputs); in eval mode, and in
    training without teacher forcing, it reads the mean of its own reconstructions."""
    sae, x, doc_start = open_sae(), windows(), with_documents()
    oracle = MeanOracleSAE(MeanOracleConfig(d_in=D, d_sae=F, k=K)).double()
    oracle.load_state_dict(sae.state_dict())
    forced, reference = sae.train()(x, doc_start), oracle(x, doc_start)
    for a, b in zip(forced[:4], reference[:4]):
        assert torch.equal(a, b)
    own = sae.eval()(x, doc_start)
    assert not torch.allclose(own.reconstruction, forced.reconstruction)
    looped = open_sae(teacher_forcing=False).train()(x, doc_start)
    torch.testing.assert_close(looped.reconstruction, own.reconstruction)


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_the_read_of_the_mean_learns_from_every_position(teacher_forcing):
    sae, x = open_sae(teacher_forcing=teacher_forcing).train(), windows()
    out = sae(x, with_documents())
    (out.reconstruction - x).pow(2).sum().backward()
    assert sae.W_ctx.grad.abs().sum() > 0 and sae.W_enc.grad.abs().sum() > 0 and sae.W_dec.grad.abs().sum() > 0


@pytest.mark.usefixtures("single_thread")
def test_the_mean_of_its_reconstructions_explains_a_window_long_region(score_on_regions):
    """Opened from W_ctx = 0 by training (teacher-forced), k = 4 codes decoded from codes alone beat TopK's 4 and 6
    where the region lasts the window."""
    mean_fvu, _ = score_on_regions(lambda: DocumentMeanSAE(DocumentMeanConfig(d_in=64, d_sae=128, k=4)))
    topk4, _ = score_on_regions(lambda: TopKSAE(TopKConfig(d_in=64, d_sae=128, k=4)))
    topk6, _ = score_on_regions(lambda: TopKSAE(TopKConfig(d_in=64, d_sae=128, k=6)))
    assert mean_fvu < topk6 and mean_fvu < 0.8 * topk4
