"""Region onsets on real labels: does a latent fire where a code block or a language run starts, and stay silent inside?

On text with region labels (``Windows.labels``: the Debian Reference's blocks), a *region* is a
maximal run of consecutive kept positions of one document with the same label: the same block
(its class: the block's kind, "kind/code", "kind/heading", ...) or the same language ("language/de").
Its *onset* is its first position, if the position before it is in the window, kept and in the
same document (a region already running when the window starts has no visible onset, and neither
its positions nor its firings count below). Per region class and latent, over the evaluation:

* ``onset_recall``: share of the class's onsets where the latent's novel code fires within
  ``slack`` positions of the onset (the probe's one token either way by default);
* ``onset_precision``: share of the latent's novel firings (anywhere) that fall within ``slack``
  of an onset of the class;
* ``firings_per_region``: its novel firings inside regions of the class per region (ideal
  contextual latent: 1; a per-token latent: about the region length);
* ``fire_share_inside``: share of region positions beyond the onset window where the novel code
  fires (0: silent inside);
* ``flicker_inside``: on->off switches of the effective code between two positions of one region,
  per active region position (as ``ctxsae.metrics.temporal.ground_truth_regions``).

Each class reports its best latent by onset F1 (harmonic mean of precision and recall), chosen
on the same windows (an in-sample maximum over d_sae latents: optimistic for small evaluations).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.metrics.temporal import active_before, active_pattern, continuation_mask
from ctxsae.models.base import SAEOutput



class LabelRuns(NamedTuple):
    start_BT: Tensor  # a run starts here: a new stretch (see continuation_mask) or a new label
    onset_BT: Tensor  # a run starts here and the position before is in the same stretch: a visible onset
    visible_BT: Tensor  # the position's run has a visible onset


def label_runs(label_BT: Tensor, cont_BT: Tensor) -> LabelRuns:
    """Runs of equal labels within continued stretches; label -1 (no region) is never an onset."""
    change = torch.zeros_like(cont_BT)
    change[:, 1:] = label_BT[:, 1:] != label_BT[:, :-1]
    start = ~cont_BT | change
    onset = cont_BT & change & (label_BT >= 0)
    t = torch.arange(label_BT.shape[1], device=label_BT.device)
    last_start = torch.where(start, t, 0).cummax(-1).values
    return LabelRuns(start, onset, onset.gather(1, last_start))


def near(pattern_BT: Tensor, slack: int) -> Tensor:
    """bool [..., T]: ``pattern`` true within ``slack`` positions (same row)."""
    out = pattern_BT.clone()
    for s in range(1, slack + 1):
        out[..., s:] |= pattern_BT[..., :-s]
        out[..., :-s] |= pattern_BT[..., s:]
    return out


class _ClassCounts:
    """Per-latent counts of one region class."""

    def __init__(self, d_sae: int):
        zeros = lambda: torch.zeros(d_sae, dtype=torch.long)  # noqa: E731
        self.regions = self.positions = self.inside = 0
        self.hits, self.fires_near, self.fires_in = zeros(), zeros(), zeros()
        self.fires_inside, self.offs, self.active = zeros(), zeros(), zeros()


class RegionOnsets:
    """Accumulator (``update(batch, out)``, ``compute()``) of the figures above; nothing without labels."""

    def __init__(self, d_sae: int, slack: int = 1):
        self.d_sae, self.slack = d_sae, slack
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.classes: dict[str, _ClassCounts] = {}

    @torch.no_grad()
    def update(self, batch: Windows, out: SAEOutput) -> None:
        labels = batch.labels
        if labels is None:
            return
        cont = continuation_mask(batch.doc_start_BT, batch.mask_BT)
        z = active_pattern(out.codes, batch.mask_BT)  # [B, F, T]
        a = active_pattern(out.effective_codes, batch.mask_BT)
        z_near = near(z, self.slack)
        count = lambda t: t.sum(-1).sum(0).cpu()  # noqa: E731
        self.fires += count(z)
        axes = (("kind", labels.block_NT, labels.kind_NT, labels.kinds),
                ("language", labels.language_NT, labels.language_NT, labels.languages))
        for axis, run_label, class_label, names in axes:
            runs = label_runs(run_label, cont)
            same_run = cont & ~runs.start_BT
            for c, name in enumerate(names):
                is_c = class_label == c
                onset = runs.onset_BT & is_c
                if not bool(onset.any()):
                    continue
                at_onset = near(onset, self.slack)
                inside = runs.visible_BT & is_c & batch.mask_BT
                beyond = inside & ~at_onset
                k = self.classes.setdefault(f"{axis}/{name}", _ClassCounts(self.d_sae))
                k.regions += int(onset.sum())
                k.positions += int(inside.sum())
                k.inside += int(beyond.sum())
                k.hits += count(z_near & onset[:, None])
                k.fires_near += count(z & at_onset[:, None])
                k.fires_in += count(z & inside[:, None])
                k.fires_inside += count(z & beyond[:, None])
                a_in = a & inside[:, None]
                k.offs += count(active_before(a_in, same_run) & ~a & inside[:, None])
                k.active += count(a_in)

    def compute(self) -> dict:
        out = {}
        for name, k in sorted(self.classes.items()):
            recall = k.hits.double() / max(k.regions, 1)
            precision = k.fires_near.double() / self.fires.double().clamp_min(1)
            f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
            best = int(f1.argmax())
            out[name] = {
                "n_regions": k.regions,
                "mean_length": k.positions / max(k.regions, 1),
                "latent": best,
                "onset_f1": float(f1[best]),
                "onset_precision": float(precision[best]),
                "onset_recall": float(recall[best]),
                "firings_per_region": float(k.fires_in[best]) / max(k.regions, 1),
                "fire_share_inside": float(k.fires_inside[best]) / max(k.inside, 1),
                "flicker_inside": float(k.offs[best]) / max(int(k.active[best]), 1),
            }
        return out
