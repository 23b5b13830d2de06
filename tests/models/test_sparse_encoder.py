"""The sparse encoder backward gives plain autograd's values and gradients, for every model that uses it."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae.models.attention import AttentionSAE
from ctxsae.models.batchtopk import BatchTopKSAE
from ctxsae.models.recurrent import RecurrentSAE
from ctxsae.models.sparse_encoder import OneThread, SelectedPreActs
from ctxsae.models.tfa import TFASAE
from ctxsae.models.topk import TopKSAE, decode_sparse

pytestmark = pytest.mark.usefixtures("single_thread")



def plain_selected_pre_acts(x_ND, W_enc, b_F, pre_NF, idx):
    """The reference: the same values through ordinary autograd (a dense gradient at pre)."""
    pre_NF = x_ND @ W_enc + b_F
    return pre_NF.flatten().take(idx), pre_NF


def loss_and_grads(sae, x_BTD, doc_start_BT, dead_F):
    out = sae(x_BTD, doc_start_BT)
    loss = (out.reconstruction - x_BTD).pow(2).sum(-1).mean()
    if dead_F is not None:
        loss = loss + sae.auxiliary_loss(x_BTD, out, dead_F).mean() / 32
    params = [p for p in sae.parameters() if p.requires_grad]
    return out, torch.autograd.grad(loss, params, allow_unused=True)


def build(cls, device, **kw):
    torch.manual_seed(0)
    sae = cls(cls.config_class(d_in=32, d_sae=128, k=6, **kw)).to(device)
    with torch.no_grad():
        sae.b_dec.normal_()  # b_dec is folded into the encoder bias: give it a gradient worth checking
        if isinstance(sae, RecurrentSAE):
            sae.retention_raw.uniform_(0.0, 0.12)  # some latents hold, some decay, some are closed
        if isinstance(sae, AttentionSAE) and "carry_init" not in kw:
            sae.carry_logit[::2] = 1.0  # half the features carry: the second pass's input has a gradient
        if isinstance(sae, TFASAE):
            sae.gain.fill_(0.5)  # the prediction is open: the residual's codes depend on the attention maps
    return sae


@pytest.mark.parametrize("cls,kw", [(TopKSAE, {}), (BatchTopKSAE, {}), (RecurrentSAE, {}), (AttentionSAE, {}),
                                    (AttentionSAE, {"carry_init": -0.1}),  # closed: no value has a gradient
                                    (TFASAE, {"bottleneck_factor": 8})])
@pytest.mark.parametrize("auxk", [False, True])
def test_values_and_gradients_match_plain_autograd(cls, kw, auxk, device, monkeypatch):
    x = torch.randn(3, 12, 32, device=device)
    doc_start = torch.zeros(3, 12, dtype=torch.bool, device=device)
    doc_start[:, 0] = doc_start[1, 5] = True
    dead = (torch.arange(128, device=device) % 3 == 0) if auxk else None
    sae = build(cls, device, **kw)
    out, grads = loss_and_grads(sae, x, doc_start, dead)
    monkeypatch.setattr(SelectedPreActs, "apply", plain_selected_pre_acts)
    ref_out, ref_grads = loss_and_grads(sae, x, doc_start, dead)
    for a, b in zip(out[:3], ref_out[:3]):
        assert torch.equal(a, b)
    assert torch.equal(out.pre_acts, ref_out.pre_acts)
    for (name, _), g, ref in zip(sae.named_parameters(), grads, ref_grads):
        if ref is None:
            assert g is None or not g.any(), name
        else:
            assert_close(g, ref, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("carry_open", [False, True])
def test_attention_second_pass_matches_the_full_product(carry_open, device, monkeypatch):
    """Attention's novel codes with the second product and selection skipped while c = 0, against both always formed."""
    x = torch.randn(3, 12, 32, device=device)
    doc_start = torch.zeros(3, 12, dtype=torch.bool, device=device)
    doc_start[:, 0] = doc_start[1, 5] = True
    sae = build(AttentionSAE, device)
    if not carry_open:
        torch.nn.init.constant_(sae.carry_logit, -0.1)  # closed: c = 0, the second pass is the first
    out, grads = loss_and_grads(sae, x, doc_start, None)
    assert out.aux["context"].any() == carry_open
    monkeypatch.setattr(AttentionSAE, "novel_code", lambda sae, x, cW, dense, ui: sae.topk_code(x - cW))
    ref_out, ref_grads = loss_and_grads(sae, x, doc_start, None)
    for field in ("codes", "effective_codes", "pre_acts"):  # the same selection
        assert torch.equal(getattr(out, field), getattr(ref_out, field))
    assert_close(out.reconstruction, ref_out.reconstruction)  # the k decoder rows summed in their selection's order
    for (name, _), g, ref in zip(sae.named_parameters(), grads, ref_grads):
        assert_close(g, ref, rtol=1e-4, atol=1e-5, msg=name)


def test_sparse_decode_matches_embedding_bag_autograd_with_uneven_and_empty_bags(device):
    """The decoder's own backward (a bag per latent; the values' gradient an SDDMM on the CPU) against
    embedding_bag's, for flat entries with offsets, empty bags in the middle and at the end."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(40, 8, generator=g).to(device).requires_grad_()
    counts = torch.tensor([3, 0, 5, 1, 0, 7, 0])
    idx = torch.cat([torch.randperm(40, generator=g)[:c] for c in counts]).to(device)
    vals = torch.randn(len(idx), generator=g).to(device).requires_grad_()
    offsets = (counts.cumsum(0) - counts).to(device)
    target = torch.randn(len(counts), 8, generator=g).to(device)
    out = decode_sparse(W_dec, idx, vals, offsets)
    grads = torch.autograd.grad((out * target).sum(), [W_dec, vals])
    ref = torch.nn.functional.embedding_bag(idx, W_dec, offsets, mode="sum", per_sample_weights=vals)
    ref_grads = torch.autograd.grad((ref * target).sum(), [W_dec, vals])
    assert torch.equal(out, ref)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b)


def test_one_thread_block_gives_the_values_and_gradients_of_the_plain_block():
    """OneThread runs the same operations: equal values and gradients, a gradient only where one is needed,
    integer outputs without one, and the thread count restored."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g).requires_grad_(), torch.randn(5, generator=g)
    c = torch.randn(5, generator=g).requires_grad_()

    def block(a, b, c, scale):
        y = (a * b).relu() @ c.exp() * scale
        return y, (y > 0).long(), a.sum(0) / c

    threads = torch.get_num_threads()
    out = OneThread.apply(block, a, b, c, 2.0)
    ref = block(a, b, c, 2.0)
    assert torch.get_num_threads() == threads
    assert all(torch.equal(o, r) for o, r in zip(out, ref)) and not out[1].requires_grad
    weights = torch.randn(5, generator=g)
    grads = torch.autograd.grad(out[0].sum() + (weights * out[2]).sum(), [a, c])
    ref_grads = torch.autograd.grad(ref[0].sum() + (weights * ref[2]).sum(), [a, c])
    assert all(torch.equal(x, y) for x, y in zip(grads, ref_grads))
    with torch.no_grad():
        assert not OneThread.apply(block, a, b, c, 2.0)[0].requires_grad


def test_sparse_decode_skipping_zero_entries_changes_nothing(device):
    """Entries of value 0 left out of the output and dL/dW_dec: the same values and gradients, and their own
    gradient (which a closed carry or an unheld value learns from) still formed."""
    g = torch.Generator().manual_seed(1)
    W_dec = torch.randn(40, 8, generator=g).to(device).requires_grad_()
    counts = torch.tensor([3, 0, 5, 1, 2, 7])
    idx = torch.cat([torch.randperm(40, generator=g)[:c] for c in counts]).to(device)
    vals = torch.randn(len(idx), generator=g).to(device)
    vals[::3] = 0.0
    vals[7:9] = 0.0  # a bag of zeros only
    vals.requires_grad_()
    offsets = (counts.cumsum(0) - counts).to(device)
    target = torch.randn(len(counts), 8, generator=g).to(device)
    results = []
    for skip_zeros in (True, False):
        out = decode_sparse(W_dec, idx, vals, offsets, skip_zeros=skip_zeros)
        results.append((out, *torch.autograd.grad((out * target).sum(), [W_dec, vals])))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[0][2][vals == 0].ne(0).all()
