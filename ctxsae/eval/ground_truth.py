"""Synthetic data: the SAE scored against the ground truth of the held-out windows."""

from __future__ import annotations

import torch

from ctxsae.data.synthetic import SyntheticSource
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.held_out import held_out_indices
from ctxsae.metrics import synthetic
from ctxsae.metrics.temporal import ground_truth_regions
from ctxsae.models.base import SAE


@torch.no_grad()
def ground_truth_figures(sae: SAE, dm, cfg: EvalConfig) -> dict | None:
    """Ground-truth figures on the held-out windows, regenerated exactly (not from the float16 cache);
    None when the data has no ground truth."""
    if not isinstance(dm.source, SyntheticSource):
        return None
    data = dm.source.ground_truth(held_out_indices(dm, cfg))
    device = next(sae.parameters()).device
    figures = {k.replace("/", "_"): v for k, v in synthetic.evaluate(sae, data).items()}
    if bool(data.is_region_F.any()):
        out = sae(sae.normalize(data.x_NTD.to(device)), data.doc_start_NT.to(device))
        inside = data.acts_NTF[..., data.is_region_F] > 0
        match = synthetic.match_by_decoder(sae.W_dec, data)
        figures |= {f"gt_region_{k}": v for k, v in ground_truth_regions(out, data.doc_start_NT, inside, match).items()}
    return figures
