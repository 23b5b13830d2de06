"""Temporal structure of the codes: do latents fire once per region, or flicker ("spurious localisation")?

A latent that stands for something true of a whole passage ("this is German") has, in a per-token
SAE, to fire at every position of the passage; in practice it fires at some and not at others,
which makes the feature look local when it is not. A contextual SAE should instead send one novel
code where the region starts and carry it (effective code) for the rest. Per latent, over the
kept positions of the evaluation windows:

* **runs** of a code (novel or effective): maximal spans of consecutive non-zero positions within a
  document. ``flicker`` = on->off switches per active position (a run ended while the document
  went on; the end of a window is not a switch, we cannot see past it); ``run_length`` = active
  positions per run; ``continuation`` = share of active positions whose latent was active at the
  previous position too.
* **regions**, defined without ground truth: the effective code's runs with gaps of at most
  ``gap`` silent positions closed, kept if at least ``min_len`` long. So a per-token latent that
  fires, pauses one token and fires again is one region with a hole, not two regions. Inside them:
  ``region_fire_share`` = share of region positions where the *novel* code fires (a per-token SAE:
  its coverage, near 1; an ideal contextual SAE: 1 / region length), ``region_fires_per_region``
  (ideal contextual: 1) and ``region_coverage`` = share of region positions where the effective
  code is active (1: held without holes).

Per-latent figures are summarised over the latents that fire as ``mean``, ``median`` and
``weighted`` (mean weighted by the latent's active positions, i.e. the pooled ratio). On synthetic
data ``ground_truth_regions`` scores the same things inside the true regions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.models.base import SAEOutput


def continuation_mask(doc_start_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """bool [B, T]: position t continues the stretch of t - 1 (both kept, same document)."""
    cont = torch.zeros_like(mask_BT, dtype=torch.bool)
    cont[:, 1:] = mask_BT[:, 1:] & mask_BT[:, :-1] & ~doc_start_BT[:, 1:]
    return cont


# Patterns are laid out [B, F, T], time last and contiguous: the scans and sums below run along
# contiguous memory, several times faster than along the middle axis of [B, T, F].


class RunCounts(NamedTuple):
    active: Tensor  # [F] active positions
    starts: Tensor  # [F] runs (a run starts where the latent was not active at a continued t - 1)
    offs: Tensor  # [F] on -> off switches inside a document
    continued: Tensor  # [F] active positions whose latent was active at t - 1 too


def active_before(active_BFT: Tensor, cont_BT: Tensor) -> Tensor:
    """Active at t - 1 and t continues it."""
    prev = torch.zeros_like(active_BFT)
    prev[..., 1:] = active_BFT[..., :-1] & cont_BT[:, None, 1:]
    return prev


def run_counts(active_BFT: Tensor, cont_BT: Tensor) -> RunCounts:
    """Per-latent run counts of a bool activity pattern (already False at positions not kept)."""
    prev = active_before(active_BFT, cont_BT)
    count = lambda t: t.sum(-1).sum(0)  # noqa: E731  (along T first: contiguous, ~10x faster than sum((0, 2)))
    return RunCounts(count(active_BFT), count(active_BFT & ~prev), count(prev & ~active_BFT), count(active_BFT & prev))


def _rev_cummin(t: Tensor) -> Tensor:
    return t.flip(-1).cummin(-1).values.flip(-1)


def close_gaps(active_BFT: Tensor, cont_BT: Tensor, gap: int) -> Tensor:
    """``active`` with every silent stretch of at most ``gap`` positions between two active ones filled.

    Fills only within a continued stretch (never across a document start or a masked position).
    A hole at t is filled iff some active t - i and t + j with i + j - 1 <= gap share a stretch:
    O(gap^2) shifted ANDs, far cheaper than scans over [B, F, T] for the small gaps meant here.
    """
    T = active_BFT.shape[-1]
    stretch_BT = (~cont_BT).cumsum(-1)  # id of the stretch each position belongs to
    closed = active_BFT.clone()
    for i in range(1, gap + 1):
        for j in range(1, gap + 2 - i):
            if i + j >= T:
                continue
            same = (stretch_BT[:, : T - i - j] == stretch_BT[:, i + j :])[:, None]
            closed[..., i : T - j] |= active_BFT[..., : T - i - j] & active_BFT[..., i + j :] & same
    return closed


def region_lengths(closed_BFT: Tensor, cont_BT: Tensor) -> tuple[Tensor, Tensor]:
    """Length of the region each position belongs to [B, F, T] (0 outside regions), and region starts."""
    T = closed_BFT.shape[-1]
    t = torch.arange(T, device=closed_BFT.device, dtype=torch.int32)
    start = closed_BFT & ~active_before(closed_BFT, cont_BT)
    follows = torch.zeros_like(closed_BFT)
    follows[..., :-1] = closed_BFT[..., 1:] & cont_BT[:, None, 1:]
    end = closed_BFT & ~follows
    start_pos = torch.where(start, t, 0).cummax(-1).values
    end_pos = _rev_cummin(torch.where(end, t, T - 1))
    return torch.where(closed_BFT, end_pos - start_pos + 1, 0), start


def summarise(values_F: Tensor, weights_F: Tensor) -> dict[str, float]:
    """mean, median and weighted mean over the latents with a positive weight."""
    keep = weights_F > 0
    if not bool(keep.any()):
        return {"mean": float("nan"), "median": float("nan"), "weighted": float("nan")}
    v, w = values_F[keep].double(), weights_F[keep].double()
    return {"mean": v.mean().item(), "median": v.median().item(), "weighted": ((v * w).sum() / w.sum()).item()}


def active_pattern(codes_BTF: Tensor, mask_BT: Tensor) -> Tensor:
    """bool [B, F, T]: non-zero at a kept position."""
    return ((codes_BTF != 0) & mask_BT[..., None]).transpose(1, 2).contiguous()


class Temporal:
    """Streaming per-latent run and region counts; ``update`` per batch, ``compute`` once."""

    def __init__(self, d_sae: int, gap: int = 2, min_len: int = 4):
        self.gap, self.min_len = gap, min_len
        zeros = lambda: torch.zeros(d_sae, dtype=torch.long)  # noqa: E731
        self.novel = RunCounts(zeros(), zeros(), zeros(), zeros())
        self.effective = RunCounts(zeros(), zeros(), zeros(), zeros())
        self.region_pos, self.region_fires, self.region_active, self.regions = zeros(), zeros(), zeros(), zeros()

    @torch.no_grad()
    def update(self, batch: Windows, out: SAEOutput) -> None:
        mask_BT = batch.mask_BT
        cont = continuation_mask(batch.doc_start_BT, mask_BT)
        a = active_pattern(out.effective_codes, mask_BT)
        same = out.codes is out.effective_codes  # per-token SAEs: count once
        z = a if same else active_pattern(out.codes, mask_BT)
        eff_counts = run_counts(a, cont)
        novel_counts = eff_counts if same else run_counts(z, cont)
        self.novel = RunCounts(*(s + n.cpu() for s, n in zip(self.novel, novel_counts)))
        self.effective = RunCounts(*(s + n.cpu() for s, n in zip(self.effective, eff_counts)))
        length, start = region_lengths(close_gaps(a, cont, self.gap), cont)
        region = length >= self.min_len
        count = lambda t: t.sum(-1).sum(0).cpu()  # noqa: E731
        self.region_pos += count(region)
        self.region_active += count(region & a)
        self.region_fires += count(region & z)
        self.regions += count(region & start)

    def compute(self) -> dict:
        weight = self.effective.active  # "weighted by firing": by active (effective) positions
        out = {}
        for name, c in (("effective", self.effective), ("novel", self.novel)):
            act = c.active.double().clamp_min(1)
            out[f"flicker_{name}"] = summarise(c.offs / act, c.active)
            out[f"run_length_{name}"] = summarise(c.active / c.starts.double().clamp_min(1), c.active)
            out[f"continuation_{name}"] = summarise(c.continued / act, c.active)
        has_region = self.regions > 0
        w = torch.where(has_region, weight, 0)
        pos = self.region_pos.double().clamp_min(1)
        out |= {
            "region_fire_share": summarise(self.region_fires / pos, w),
            "region_fires_per_region": summarise(self.region_fires / self.regions.double().clamp_min(1), w),
            "region_coverage": summarise(self.region_active / pos, w),
            "region_latent_fraction": has_region.double().mean().item(),
            "region_mean_length": self.region_pos.sum().item() / max(self.regions.sum().item(), 1),
            "region_gap": self.gap,
            "region_min_len": self.min_len,
        }
        return out


def ground_truth_regions(out: SAEOutput, doc_start_NT: Tensor, inside_NTR: Tensor, match_R: Tensor) -> dict[str, float]:
    """Inside the true regions of each region feature, what its matched latent does (pooled over features).

    ``inside_NTR``: the true region feature r is active at (n, t); ``match_R``: its latent. Returns
    ``fire_share`` (novel code non-zero; a contextual SAE's ideal is 1 / region length),
    ``coverage`` (effective code non-zero: the region is represented at all) and ``flicker``
    (on->off switches of the effective code between two positions of a region, per active position).
    """
    idx = match_R.to(out.codes.device)
    inside = inside_NTR.transpose(1, 2).contiguous()
    z = (out.codes[..., idx] != 0).cpu().transpose(1, 2) & inside
    a = (out.effective_codes[..., idx] != 0).cpu().transpose(1, 2) & inside
    cont = continuation_mask(doc_start_NT, torch.ones_like(doc_start_NT))
    both_inside = active_before(inside, cont) & inside
    offs = (active_before(a, cont) & ~a & both_inside).sum()
    n_in = inside.sum().clamp_min(1)
    return {
        "fire_share": (z.sum() / n_in).item(),
        "coverage": (a.sum() / n_in).item(),
        "flicker": (offs / a.sum().clamp_min(1)).item(),
    }
