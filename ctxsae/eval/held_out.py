"""The held-out pass: every held-out window through the SAE once, its output to every accumulator."""

from __future__ import annotations

from collections.abc import Mapping

from ctxsae.eval.config import EvalConfig
from ctxsae.metrics import Accumulator, accumulate, held_out_accumulators
from ctxsae.models.base import SAE


def held_out_pass(sae: SAE, dm, cfg: EvalConfig, extra: Mapping[str, Accumulator] = {}) -> dict[str, Accumulator]:
    """The standard accumulators (``ctxsae.metrics.held_out_accumulators``) plus ``extra``, after one pass
    over the first ``cfg.held_out_windows`` held-out windows of ``dm`` (in the SAE's units, on its device)."""
    device = next(sae.parameters()).device
    accumulators = {**held_out_accumulators(sae, cfg.metrics, device), **extra}
    batches = dm.held_out_batches(cfg.batch_windows, cfg.held_out_windows, device, dm.unit_of(sae))
    accumulate(sae, batches, accumulators)
    return accumulators


def held_out_indices(dm, cfg: EvalConfig):
    """Indices into the cache of the windows the held-out pass reads."""
    return dm.val_idx if cfg.held_out_windows <= 0 else dm.val_idx[: cfg.held_out_windows]
