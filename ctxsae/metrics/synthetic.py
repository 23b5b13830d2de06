"""Scores against the synthetic ground truth (ctxsae.data.synthetic).

* ``feature_recovery``: did the dictionary find the true directions?
* ``onset_scores``: does the latent of a region feature fire once, at the region's onset, and stay
  silent while context carries the feature? This is the behaviour a contextual SAE claims.
* ``l0_at_matched_fvu``: the sparsity a run needs to reach a given reconstruction quality, for
  comparing SAE families along their sparsity sweeps rather than at one arbitrary setting.
* ``evaluate``: all of it for one SAE on one dataset, as a flat dict of floats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ctxsae.data.synthetic import SyntheticData, ground_truth_dense_l0, ground_truth_l0
from ctxsae.metrics.basic import fvu, l0


class Recovery(NamedTuple):
    mean: float  # mean over all true features of the best cosine similarity to a decoder row
    region: float  # the same over region features (nan if there are none)
    token: float  # the same over token features (nan if there are none)
    cos_G: Tensor  # [G] best cosine similarity of each true feature
    latent_G: Tensor  # [G] the decoder row that achieves it


def feature_recovery(W_dec_FD: Tensor, features_GD: Tensor, is_region_G: Tensor | None = None) -> Recovery:
    """Mean over TRUE features of the max cosine similarity to any decoder row.

    Signed cosine: a latent that writes -f is not f (a ReLU code cannot make it so).
    """
    W = W_dec_FD.detach().float()
    cos_GF = torch.nn.functional.normalize(features_GD.float(), dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    cos_G, latent_G = cos_GF.max(dim=1)
    region = torch.zeros_like(cos_G, dtype=torch.bool) if is_region_G is None else is_region_G.bool()
    return Recovery(cos_G.mean().item(), _mean(cos_G[region]), _mean(cos_G[~region]), cos_G, latent_G)


def match_by_decoder(W_dec_FD: Tensor, data: SyntheticData) -> Tensor:
    """[R] latent for each region feature: the decoder row most cosine-similar to it.

    The default for ``onset_scores``: it does not look at when latents fire, so scoring their
    timing against onsets is not circular.
    """
    return feature_recovery(W_dec_FD, data.features_FD[data.is_region_F]).latent_G


def match_by_activation(effective_codes_NTF: Tensor, data: SyntheticData) -> Tensor:
    """[R] latent for each region feature: the one whose *effective* code correlates best with it.

    For dictionaries that split or rotate a feature, where the nearest decoder row need not be the
    latent that carries it. Uses effective codes (what is active after context), so the timing of
    the novel codes, which ``onset_scores`` measures, still plays no part in the match.
    """
    a = data.acts_NTF[..., data.is_region_F].reshape(-1, int(data.is_region_F.sum())).float()
    c = effective_codes_NTF.detach().reshape(-1, effective_codes_NTF.shape[-1]).float()
    a, c = a - a.mean(0), c - c.mean(0)
    corr_RF = (a.T @ c) / (a.norm(dim=0)[:, None] * c.norm(dim=0)[None, :]).clamp_min(1e-12)
    return corr_RF.argmax(dim=1)


class OnsetScores(NamedTuple):
    precision: float  # of the matched latents' firings inside their feature's regions, share within 1 of an onset
    recall: float  # share of region onsets with the matched latent firing within 1 token
    firings_per_region: float  # matched-latent firings inside regions / number of regions (ideal: 1)
    precision_R: Tensor  # [R] per region feature (nan where its latent never fires inside its regions)
    recall_R: Tensor  # [R] (nan where the feature has no onset)
    firings_per_region_R: Tensor  # [R]


def onset_scores(codes_NTF: Tensor, data: SyntheticData, match_R: Tensor) -> OnsetScores:
    """Onset precision/recall of the novel ``codes`` of the latents ``match_R`` matched to region features.

    A region onset is *hit* if its latent's code is non-zero within +-1 token of it (one token of
    slack for a code that needs a position to be sure). Precision counts only firings inside regions
    of the latent's feature: firing there at all, beyond the onset, is what a per-token SAE does and a
    contextual one should not; firings elsewhere (e.g. a diff code switching the feature off) are not
    judged. Neighbours never reach across a document start. Aggregates are pooled over features.
    """
    region = data.is_region_F
    fire = codes_NTF.detach()[..., match_R.to(codes_NTF.device)].cpu() != 0
    onset, inside = data.onset_NTF[..., region], data.acts_NTF[..., region] > 0
    hits = onset & _near(fire, data.doc_start_NT)
    fires_inside = fire & inside
    good = fires_inside & _near(onset, data.doc_start_NT)

    n_onset, n_hit = onset.sum((0, 1)).float(), hits.sum((0, 1)).float()
    n_in, n_good = fires_inside.sum((0, 1)).float(), good.sum((0, 1)).float()
    return OnsetScores(
        _ratio(n_good.sum(), n_in.sum()), _ratio(n_hit.sum(), n_onset.sum()), _ratio(n_in.sum(), n_onset.sum()),
        n_good / n_in, n_hit / n_onset, n_in / n_onset,
    )


def _near(b_NTR: Tensor, doc_start_NT: Tensor) -> Tensor:
    """True where ``b`` is True at t-1, t or t+1 of the same document."""
    same_doc = ~doc_start_NT[:, 1:, None]  # positions t-1 and t share a document
    out = b_NTR.clone()
    out[:, 1:] |= b_NTR[:, :-1] & same_doc
    out[:, :-1] |= b_NTR[:, 1:] & same_doc
    return out


def l0_at_matched_fvu(points: list[tuple[float, float]], target_fvu: float) -> float:
    """L0 a family of runs needs to reach ``target_fvu``, from (fvu, l0) points of a sparsity sweep.

    Only the Pareto front counts (a run beaten on both FVU and L0 by another says nothing about
    the trade-off), and runs with L0 = 0 are dropped. Between neighbouring front points, log L0 is
    interpolated linearly in FVU: FVU falls roughly exponentially with L0 along a sweep, so this is
    close to exact between nearby points and never extrapolates. nan when ``target_fvu`` lies
    outside the FVU range the runs cover.
    """
    front: list[tuple[float, float]] = []
    for f, n in sorted((float(f), float(n)) for f, n in points if n > 0):
        if not front or n < front[-1][1]:
            front.append((f, n))  # sorted by FVU, so a point joins only if it also needs less L0
    if not front or not front[0][0] <= target_fvu <= front[-1][0]:
        return math.nan
    fvus, log_l0 = zip(*((f, math.log(n)) for f, n in front))
    return math.exp(float(np.interp(target_fvu, fvus, log_l0)))


@torch.no_grad()
def evaluate(sae, data: SyntheticData, batch_windows: int = 256) -> dict[str, float]:
    """Every synthetic figure for one SAE (a ``ctxsae.models.base.SAE``) on ``data``."""
    device = next(sae.parameters()).device
    outs = [
        sae(sae.normalize(x.to(device)), ds.to(device))
        for x, ds in zip(data.x_NTD.split(batch_windows), data.doc_start_NT.split(batch_windows))
    ]
    codes = torch.cat([o.codes for o in outs]).cpu()
    effective = torch.cat([o.effective_codes for o in outs]).cpu()
    recon = sae.denormalize(torch.cat([o.reconstruction for o in outs])).cpu()
    rec = feature_recovery(sae.W_dec, data.features_FD, data.is_region_F)
    figures = {
        "fvu": fvu(data.x_NTD, recon).item(),
        "l0": l0(codes).item(),
        "l0_effective": l0(effective).item(),
        "gt_l0": ground_truth_l0(data),
        "gt_dense_l0": ground_truth_dense_l0(data),
        "recovery": rec.mean,
        "recovery_region": rec.region,
        "recovery_token": rec.token,
    }
    if bool(data.is_region_F.any()):
        for name, match in (("decoder", match_by_decoder(sae.W_dec, data)), ("activation", match_by_activation(effective, data))):
            s = onset_scores(codes, data, match)
            figures |= {f"onset_{name}/precision": s.precision, f"onset_{name}/recall": s.recall,
                        f"onset_{name}/firings_per_region": s.firings_per_region}
    return figures


def _mean(t: Tensor) -> float:
    return t.mean().item() if t.numel() else math.nan


def _ratio(a: Tensor, b: Tensor) -> float:
    return (a / b).item() if b > 0 else math.nan
