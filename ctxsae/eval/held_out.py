"""The held-out pass: every held-out window through the SAE once, its output to every accumulator."""

from __future__ import annotations

from collections.abc import Mapping

from ctxsae.eval.config import EvalConfig
from ctxsae.eval.stages import UNSEEN, Stage
from ctxsae.metrics import Accumulator, accumulate, held_out_accumulators
from ctxsae.metrics.persistence import PersistenceOracle, RegionMeanBound
from ctxsae.metrics.regions import RegionOnsets
from ctxsae.models.base import SAE, ContextualSAE

#: What the evaluation adds to the standard held-out figures: region onsets on labelled text, the persistence
#: oracle of a per-token SAE's dictionary, and the dictionary-free region-mean bound.
REGION_FIGURES = ("regions", "persistence", "region_bound")


def evaluation_accumulators(sae: SAE, cfg: EvalConfig) -> dict[str, Accumulator]:
    """The standard held-out accumulators (``ctxsae.metrics.held_out_accumulators``) and ``REGION_FIGURES``."""
    device = next(sae.parameters()).device
    accumulators = held_out_accumulators(sae, cfg.metrics, device)
    accumulators |= {"regions": RegionOnsets(sae.d_sae), "region_bound": RegionMeanBound()}
    if not isinstance(sae, ContextualSAE):  # a hold scheme over a per-token dictionary
        accumulators["persistence"] = PersistenceOracle(sae.decode, sae.d_in)
    return accumulators


def held_out_pass(sae: SAE, dm, cfg: EvalConfig, extra: Mapping[str, Accumulator] = {},
                  figures: bool = False, stage: Stage = UNSEEN) -> dict[str, Accumulator]:
    """The standard accumulators (and with ``figures`` the evaluation's ``REGION_FIGURES``) plus ``extra``, after
    one pass over the first ``cfg.held_out_windows`` held-out windows of ``dm`` (in the SAE's units, on its device),
    counted on ``stage``."""
    device = next(sae.parameters()).device
    standard = evaluation_accumulators(sae, cfg) if figures else held_out_accumulators(sae, cfg.metrics, device)
    accumulators = {**standard, **extra}
    batches = dm.held_out_batches(cfg.batch_windows, cfg.held_out_windows, device, dm.unit_of(sae))
    accumulate(sae, stage.track(batches), accumulators)
    return accumulators


def held_out_indices(dm, cfg: EvalConfig):
    """Indices into the cache of the windows the held-out pass reads."""
    return dm.val_idx if cfg.held_out_windows <= 0 else dm.val_idx[: cfg.held_out_windows]
