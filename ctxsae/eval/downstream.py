"""CE loss recovered and KL with the reconstruction spliced into the LM (``ctxsae.metrics.downstream``).

The zero- and mean-ablation passes do not depend on the SAE: the first evaluation on a cache stores
their sums in it (``<cache>/downstream/``), and later ones run only the clean and spliced passes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ctxsae.cache.store import atomic_write_bytes
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.stages import UNSEEN, Stage
from ctxsae.metrics.downstream import ABLATIONS, CONDITIONS, SPLICE_ONLY, Downstream
from ctxsae.models.base import SAE


@torch.no_grad()
def downstream_figures(sae: SAE, dm, cfg: EvalConfig, extractor, mean_x_D: torch.Tensor, stage: Stage = UNSEEN) -> dict:
    """CE recovered and KL on the evaluated held-out windows; ``mean_x_D``: their mean activation in the SAE's units;
    the windows counted on ``stage``."""
    device = next(sae.parameters()).device
    mean_raw_D = sae.denormalize(mean_x_D.to(device))
    baseline_file = ablation_file(dm, cfg, extractor, mean_raw_D)
    try:
        baseline = json.loads(baseline_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not computed yet, or damaged: (re)compute it below
        baseline = None
    acc = Downstream(extractor.logits, sae, mean_raw_D, SPLICE_ONLY if baseline else CONDITIONS)
    for batch in stage.track(dm.held_out_batches(cfg.batch_windows, cfg.held_out_windows, device)):
        acc.update(batch)
    if baseline is None:
        baseline_file.parent.mkdir(exist_ok=True)
        atomic_write_bytes(baseline_file, json.dumps(acc.sums(ABLATIONS)).encode())  # jobs of a sweep may evaluate at once
    return acc.compute(baseline)


def ablation_file(dm, cfg: EvalConfig, extractor, mean_raw_D: torch.Tensor) -> Path:
    """Where the ablation sums for these windows live: in the activation cache, keyed by all they depend on
    (the cache already fixes LM, hook and windows; here: which held-out windows, the LM's dtype and device, the mean)."""
    weight = next(extractor.loaded.model.parameters())
    mean = np.round(mean_raw_D.double().cpu().numpy(), 4).tobytes()
    key = json.dumps([cfg.held_out_windows, str(weight.dtype), weight.device.type, dm.cfg.exclude_first])
    digest = hashlib.sha256(key.encode() + np.asarray(dm.val_idx, dtype=np.int64).tobytes() + mean).hexdigest()[:16]
    return Path(dm.cache.folder) / "downstream" / f"ablations_{digest}.json"
