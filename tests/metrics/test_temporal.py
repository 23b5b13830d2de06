import pytest
import torch

from ctxsae.metrics.temporal import (
    Temporal, close_gaps, continuation_mask, ground_truth_regions, region_lengths, run_counts, summarise,
)
from ctxsae.cache.dataset import Windows
from ctxsae.models.base import SAEOutput


def pattern(s: str) -> torch.Tensor:
    """'11010' -> bool [B=1, F=1, T]"""
    return torch.tensor([c == "1" for c in s]).view(1, 1, -1)


def cont(T, doc_starts=(), masked=()):
    doc_start = torch.zeros(1, T, dtype=torch.bool)
    doc_start[0, 0] = True
    doc_start[0, list(doc_starts)] = True
    mask = torch.ones(1, T, dtype=torch.bool)
    mask[0, list(masked)] = False
    return continuation_mask(doc_start, mask)


def test_flicker_and_run_length_of_a_hand_built_pattern():
    c = run_counts(pattern("1101001110"), cont(10))
    assert (c.active.item(), c.starts.item(), c.offs.item(), c.continued.item()) == (6, 3, 3, 3)
    # The end of the window is not a switch: we cannot see whether the run went on.
    c = run_counts(pattern("0011"), cont(4))
    assert (c.starts.item(), c.offs.item()) == (1, 0)


def test_runs_break_at_document_starts_and_masked_positions():
    c = run_counts(pattern("1111"), cont(4, doc_starts=[2]))
    assert (c.starts.item(), c.offs.item()) == (2, 0)  # a new document: a new run, not an off switch
    c = run_counts(pattern("1101"), cont(4, masked=[2]))
    assert (c.starts.item(), c.offs.item()) == (2, 0)  # position 2 is not kept (its code is already False)


def test_gap_closing_and_region_lengths():
    active = pattern("1010001001")
    closed = close_gaps(active, cont(10), gap=2)
    assert closed.flatten().tolist() == [c == "1" for c in "1110001111"]
    assert close_gaps(active, cont(10, doc_starts=[8]), gap=2).flatten().tolist() == [c == "1" for c in "1110001001"]
    length, start = region_lengths(closed, cont(10))
    assert length.flatten().tolist() == [3, 3, 3, 0, 0, 0, 4, 4, 4, 4]
    assert start.flatten().nonzero().flatten().tolist() == [0, 6]


def score(z_1T1, a_1T1):
    T = z_1T1.shape[1]
    doc_start = torch.zeros(1, T, dtype=torch.bool)
    doc_start[:, 0] = True
    t = Temporal(d_sae=1, gap=2, min_len=4)
    mask = torch.ones(1, T, dtype=torch.bool)
    t.update(Windows(torch.zeros(1, T, 1), torch.full((1, T), -1), doc_start, mask),
             SAEOutput(z_1T1, a_1T1, torch.zeros(1, T, 1), pre_acts=z_1T1, aux={}))
    return t.compute()


def test_contextual_code_fires_once_per_region_a_flickering_one_does_not():
    # Contextual: one novel code at the region's onset (t=2), the effective code held to t=9.
    z, a = torch.zeros(1, 12, 1), torch.zeros(1, 12, 1)
    z[0, 2], a[0, 2:10] = 1.0, 1.0
    r = score(z, a)
    assert r["region_fires_per_region"]["mean"] == 1 and r["region_fire_share"]["mean"] == pytest.approx(1 / 8)
    assert r["flicker_effective"]["mean"] == pytest.approx(1 / 8) and r["run_length_effective"]["mean"] == 8
    assert r["region_coverage"]["mean"] == 1
    # Per-token: fires at 6 of those 8 positions, in runs with one-token holes: one region with holes.
    z = pattern("001101101100").float().transpose(1, 2)  # as codes [B, T, F]
    r = score(z, z)
    assert r["region_fires_per_region"]["mean"] == 6 and r["region_fire_share"]["mean"] == pytest.approx(6 / 8)
    assert r["flicker_effective"]["mean"] == pytest.approx(3 / 6) and r["run_length_effective"]["mean"] == 2
    assert r["region_coverage"]["mean"] == pytest.approx(6 / 8)


def test_summaries_weight_by_firing():
    s = summarise(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([1, 0, 3]))
    assert s == {"mean": 2.0, "median": 1.0, "weighted": 2.5}


def test_ground_truth_regions():
    T = 8
    inside = torch.zeros(1, T, 1, dtype=torch.bool)
    inside[0, 2:6] = True
    z, a = torch.zeros(1, T, 3), torch.zeros(1, T, 3)
    z[0, 2, 1], a[0, 2:4, 1], a[0, 5, 1] = 1.0, 1.0, 1.0  # onset code; effective active 3 of 4, one hole
    doc_start = torch.zeros(1, T, dtype=torch.bool)
    doc_start[0, 0] = True
    r = ground_truth_regions(SAEOutput(z, a, torch.zeros(1, T, 1), pre_acts=z, aux={}), doc_start, inside, torch.tensor([1]))
    assert r == pytest.approx({"fire_share": 1 / 4, "coverage": 3 / 4, "flicker": 1 / 3})
