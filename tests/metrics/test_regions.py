import pytest
import torch

from ctxsae.data.windows import TokenLabels
from ctxsae.metrics.regions import RegionOnsets, label_runs
from ctxsae.models.base import SAEOutput
from ctxsae.cache.dataset import Windows

# One window of 10 positions: the sink (no block), a prose block (t 1-3, running since the window start:
# no visible onset), a code block (t 4-7) and a prose block in German (t 8-9).
BLOCK = [-1, 0, 0, 0, 1, 1, 1, 1, 2, 2]
KIND = [-1, 0, 0, 0, 1, 1, 1, 1, 0, 0]  # prose, code
LANGUAGE = [-1, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # en, de


def batch(d_sae=4):
    T = len(BLOCK)
    doc_start = torch.zeros(1, T, dtype=torch.bool)
    doc_start[0, 0] = True
    mask = torch.ones(1, T, dtype=torch.bool)
    mask[0, 0] = False
    labels = TokenLabels(torch.tensor([LANGUAGE]).short(), torch.tensor([KIND]).short(), torch.tensor([BLOCK]).int(),
                         ("en", "de"), ("prose", "code"))
    return Windows(torch.zeros(1, T, 3), torch.zeros(1, T, dtype=torch.long), doc_start, mask, labels)


def codes(fires: dict[int, list[int]], d_sae=4, T=len(BLOCK)) -> SAEOutput:
    z = torch.zeros(1, T, d_sae)
    for f, ts in fires.items():
        z[0, ts, f] = 1.0
    return SAEOutput(z, z, torch.zeros(1, T, 3), z, {})


def test_label_runs_mark_visible_onsets_only():
    b = batch()
    cont = torch.ones(1, 10, dtype=torch.bool)
    cont[0, :2] = False  # the sink and the position after it start stretches
    runs = label_runs(b.labels.block_NT, cont)
    assert runs.onset_BT[0].nonzero().flatten().tolist() == [4, 8]
    assert runs.visible_BT[0].tolist() == [False] * 4 + [True] * 6


def test_onset_latent_beats_per_token_latent_on_exact_counts():
    # latent 0 fires once at the code onset; latent 1 at every code position; latent 2 once at the German onset.
    acc = RegionOnsets(d_sae=4)
    acc.update(batch(), codes({0: [4], 1: [4, 5, 6, 7], 2: [8]}))
    r = acc.compute()
    assert set(r) == {"kind/code", "kind/prose", "language/de"}  # no visible onset of the first prose run or of en
    code = r["kind/code"]
    assert code["latent"] == 0 and code["n_regions"] == 1 and code["mean_length"] == 4
    assert code["onset_recall"] == code["onset_precision"] == code["onset_f1"] == 1.0
    assert code["firings_per_region"] == 1.0 and code["fire_share_inside"] == 0.0
    assert code["flicker_inside"] == 1.0  # a per-token code: on at the onset, off at the next position of the block
    assert r["kind/prose"]["latent"] == r["language/de"]["latent"] == 2

    # Without the onset latent, the per-token latent is the best there is: half its firings near the onset.
    acc = RegionOnsets(d_sae=4)
    acc.update(batch(), codes({1: [4, 5, 6, 7]}))
    code = acc.compute()["kind/code"]
    assert code["latent"] == 1 and code["onset_precision"] == 0.5 and code["onset_f1"] == pytest.approx(2 / 3)
    assert code["firings_per_region"] == 4.0 and code["fire_share_inside"] == 1.0 and code["flicker_inside"] == 0.0


def test_no_labels_no_figures():
    acc = RegionOnsets(d_sae=4)
    acc.update(batch()._replace(labels=None), codes({0: [4]}))
    assert acc.compute() == {}
