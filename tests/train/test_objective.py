"""The temporal contrastive term (T-SAE) and its place in the objective."""

import math

import pytest
import torch
from torch.testing import assert_close

from ctxsae.errors import UserError
from ctxsae.cache.dataset import Windows
from ctxsae.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from ctxsae.train.objective import LossConfig, compute_loss, temporal_contrastive

TAU = 0.1


def _one_doc_per_row(B: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, 0] = True
    return doc_start, torch.ones(B, T, dtype=torch.bool)


def test_identical_neighbours_give_the_infonce_floor_and_swapped_ones_one_over_tau_more():
    """N documents of two positions, document b coded by latent b alone (orthogonal codes).

    Identical neighbours: each anchor's positive has cosine 1, its N - 1 negatives 0, so both directions
    give log(1 + (N - 1) e^{-1/tau}) (-> 0 as tau -> 0). Swapped (document b's second position carries
    document b+1's code): the positive has cosine 0 and exactly one negative cosine 1, log(e^{1/tau} + N - 1):
    exactly 1/tau above the floor."""
    N, F = 8, 12
    codes = torch.zeros(N, 2, F)
    codes[torch.arange(N), 0, torch.arange(N)] = 2.0  # cosine ignores the magnitude
    identical, swapped = codes.clone(), codes.clone()
    identical[:, 1] = codes[:, 0]
    swapped[:, 1] = codes[:, 0].roll(-1, dims=0)
    doc_start, mask = _one_doc_per_row(N, 2)
    floor = math.log(1 + (N - 1) * math.exp(-1 / TAU))
    assert_close(temporal_contrastive(identical, doc_start, mask, 1, TAU), torch.tensor(floor))
    assert floor < 1e-3
    assert_close(temporal_contrastive(swapped, doc_start, mask, 1, TAU), torch.tensor(floor + 1 / TAU))


def test_no_pair_crosses_a_document_start():
    """A document starting at the last position forms no pair: its code can be anything. Without the
    start, the same change moves the loss."""
    torch.manual_seed(0)
    B, T, F = 4, 6, 10
    codes = torch.rand(B, T, F)
    doc_start, mask = _one_doc_per_row(B, T)
    changed = codes.clone()
    changed[0, -1] = torch.rand(F)
    with_start = doc_start.clone()
    with_start[0, -1] = True
    assert_close(temporal_contrastive(codes, with_start, mask, 1, TAU), temporal_contrastive(changed, with_start, mask, 1, TAU),
                 rtol=0, atol=1e-6)
    assert not torch.allclose(temporal_contrastive(codes, doc_start, mask, 1, TAU), temporal_contrastive(changed, doc_start, mask, 1, TAU))


@pytest.mark.parametrize("offset", [1, 2])
def test_two_documents_in_a_window_count_as_two_windows(offset):
    """A window holding documents A | B gives the same loss as A and B in windows of their own (padded,
    the padding masked): the same pairs, the same negatives."""
    torch.manual_seed(0)
    F, a, b = 10, 5, 4
    codes = torch.rand(3, a + b, F)
    doc_start, mask = _one_doc_per_row(3, a + b)
    doc_start[0, a] = True
    split = torch.cat([codes[1:], torch.rand(2, a + b, F)])  # rows 1, 2, then A and B padded with noise
    split[2, :a], split[3, :b] = codes[0, :a], codes[0, a:]
    split_start, split_mask = _one_doc_per_row(4, a + b)
    split_mask[2, a:] = split_mask[3, b:] = False
    assert_close(temporal_contrastive(codes, doc_start, mask, offset, TAU),
                 temporal_contrastive(split, split_start, split_mask, offset, TAU))


def test_masked_positions_are_never_paired_and_no_pair_gives_zero():
    codes = torch.rand(2, 3, 5)
    doc_start, mask = _one_doc_per_row(2, 3)
    mask[:, 1] = False  # every pair at offset 1 touches position 1
    assert temporal_contrastive(codes, doc_start, mask, 1, TAU) == 0
    assert temporal_contrastive(codes, doc_start, mask, 2, TAU) > 0
    with pytest.raises(UserError, match="contrastive_offset"):
        temporal_contrastive(codes, doc_start, mask, 0, TAU)


def test_objective_applies_the_term_to_the_leading_prefix_only():
    torch.manual_seed(0)
    sae, x = BatchTopKSAE(BatchTopKConfig(d_in=16, d_sae=40, k=4, auxk_k=8)), torch.randn(4, 6, 16)
    doc_start, mask = _one_doc_per_row(4, 6)
    batch = Windows(x, torch.full((4, 6), -1), doc_start, mask)
    cfg = LossConfig(contrastive=0.5, contrastive_prefix=0.25, contrastive_offset=1, contrastive_temperature=TAU)
    loss, out, logs = compute_loss(sae, batch, cfg, 0)
    assert_close(logs["loss/contrastive"], temporal_contrastive(out.codes[..., :10], doc_start, mask, 1, TAU))
    assert_close(loss, logs["loss/mse"] + 0.5 * logs["loss/contrastive"])
    sae.zero_grad()
    compute_loss(sae, batch, LossConfig(mse=0.0, contrastive=1.0), 0)[0].backward()
    assert (sae.W_enc.grad[:, 10:] == 0).all() and (sae.W_enc.grad[:, :10] != 0).any()
    assert "loss/contrastive" not in compute_loss(sae, batch, LossConfig(), 0)[2]


def test_left_out_positions_reach_no_kept_position_through_context():
    """The attention sink at a window start is left out of the loss and, through ``Windows.context_start_BT``,
    out of a contextual SAE's context: a huge value there changes nothing at the kept positions."""
    from ctxsae.models.region import RegionConfig, RegionSAE

    torch.manual_seed(0)
    sae = RegionSAE(RegionConfig(d_in=8, d_sae=32, k=2, d_region=4))
    x = torch.randn(2, 12, 8)
    doc_start, mask = torch.zeros(2, 12, dtype=torch.bool), torch.ones(2, 12, dtype=torch.bool)
    doc_start[:, 0] = doc_start[1, 7] = True
    mask[:, :3] = False
    batch = Windows(x, torch.zeros(2, 12, dtype=torch.long), doc_start, mask)
    assert batch.context_start_BT.nonzero().tolist() == [[0, 0], [0, 3], [1, 0], [1, 3], [1, 7]]
    sink = x.clone()
    sink[:, :3] *= 1000
    loss, out, _ = compute_loss(sae, batch, LossConfig(), step=0)
    sink_loss, sink_out, _ = compute_loss(sae, batch._replace(x_BTD=sink), LossConfig(), step=0)
    assert torch.equal(loss, sink_loss) and torch.equal(out.reconstruction[:, 3:], sink_out.reconstruction[:, 3:])
