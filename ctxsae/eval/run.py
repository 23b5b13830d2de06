"""Every figure for one SAE (``evaluate``), and for one run directory, written into it (``evaluate_run``)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.downstream import downstream_figures
from ctxsae.eval.figures import heatmaps, log_tensorboard, quiet
from ctxsae.eval.ground_truth import ground_truth_figures
from ctxsae.eval.held_out import REGION_FIGURES, held_out_indices, held_out_pass
from ctxsae.eval.markdown import to_markdown
from ctxsae.eval.probe import ProbeCodes, language_switch
from ctxsae.eval.stages import Stages
from ctxsae.metrics import Accumulator
from ctxsae.models.base import SAE
from ctxsae.train.run_dir import OpenRun, open_run


class Evaluation(NamedTuple):
    results: dict  # nested, JSON-able: what eval.json holds
    figures: dict[str, Figure]  # heatmaps by name
    accumulators: dict[str, Accumulator]  # the held-out pass's, for readers of per-latent counts (the browser)
    probe: ProbeCodes | None  # the language-switch probe's windows and codes; None when it did not run


def evaluate(sae: SAE, dm, cfg: EvalConfig, extractor=None, n_ctx: int | None = None,
             extra: Mapping[str, Accumulator] = {}, stages: Stages | None = None) -> Evaluation:
    """Every figure for one SAE. ``extractor``: the LM at the hook (``LMActivations.extractor``), None without an LM;
    ``extra``: more accumulators fed by the same held-out pass (their figures are not part of the results);
    ``stages``: where the stages are shown and timed (default: a new, shown ``Stages``)."""
    stages = stages or Stages()
    dm.setup("validate")
    n_windows = len(held_out_indices(dm, cfg))
    with stages.stage("held_out", "held-out pass", n_windows) as stage:
        accumulators = held_out_pass(sae, dm, cfg, extra, figures=True, stage=stage)
        results = {name: accumulators[name].compute() for name in ("reconstruction", "sparsity", "temporal")}
        results["context"] = accumulators["context"].compute() if "context" in accumulators else None
        results["synthetic"] = ground_truth_figures(sae, dm, cfg)
        results |= {name: accumulators[name].compute() if name in accumulators else None for name in REGION_FIGURES}
    results |= {"downstream": None, "language_switch": None, "skipped": {}}
    if results["context"] is None:
        results["skipped"]["context"] = f"{type(sae).__name__} has no context pathway (no context_stats)"
    if results["synthetic"] is None:
        results["skipped"]["synthetic"] = "no ground truth: not synthetic data"
    if not results["regions"]:
        results["skipped"]["regions"] = "no region labels: the text has no labelled blocks (data=debian_reference has)"
    if results["persistence"] is None:
        results["skipped"]["persistence"] = f"{type(sae).__name__} is contextual: the oracle bounds per-token dictionaries"
    if extractor is None:
        results["skipped"] |= dict.fromkeys(("downstream", "language_switch"), "no LM behind these activations")
    elif not cfg.downstream:
        results["skipped"]["downstream"] = "downstream=false"
    if extractor is not None and cfg.downstream:
        with stages.stage("downstream", "LM passes (CE, KL)", n_windows) as stage:
            mean_x_D = accumulators["reconstruction"].mean_x_D.cpu()
            results["downstream"] = downstream_figures(sae, dm, cfg, extractor, mean_x_D, stage)
    probe = None
    if extractor is not None and cfg.probe.n_windows > 0:
        with stages.stage("language_switch", "language-switch probe", 0) as stage:
            try:
                results["language_switch"], probe = language_switch(sae, cfg, extractor, n_ctx or dm.cache.n_ctx, stage)
            except UserError as e:  # no fortunes here: the rest of the evaluation still stands
                results["skipped"]["language_switch"] = str(e)
    tokenizer = extractor.loaded.tokenizer if extractor is not None else None
    with stages.stage("heatmaps", "heatmaps"):
        figures = heatmaps(sae, dm, cfg, tokenizer, probe, results)
    results["seconds"] = stages.seconds
    return Evaluation(results, figures, accumulators, probe)


def hparams_of(train_cfg: DictConfig, sae: SAE) -> dict:
    """What defines the run, for TensorBoard's HParams view: model, loss, optim, data, LM, length, seed."""
    keep = {k: train_cfg[k] for k in ("model", "loss", "optim", "lm", "data") if k in train_cfg}
    hp = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in keep.items()}
    hp["model"] = {"name": type(sae).__name__, **(hp.get("model") or {}), "d_in": sae.d_in, "d_sae": sae.d_sae}
    hp["max_tokens"] = OmegaConf.select(train_cfg, "max_tokens")
    hp["seed"] = OmegaConf.select(train_cfg, "seed")
    return hp


def evaluate_run(cfg: EvalConfig, run: OpenRun | None = None, extra: Mapping[str, Accumulator] = {}) -> Evaluation:
    """Evaluate the run ``cfg.run`` (or the already opened ``run``); write eval.json, eval.md, heatmaps and
    TensorBoard events into it."""
    t_start = time.perf_counter()
    if run is None:
        run = open_run(cfg.run, cfg.device, cfg.downstream or cfg.probe.n_windows > 0)
    run_dir, sae_file, train_cfg, sae, dm, extractor = run
    stages = Stages()
    evaluation = evaluate(sae, dm, cfg, extractor, train_cfg.data.n_ctx, extra, stages)
    results = {
        "run": {
            "run_dir": str(run_dir.path), "sae_file": str(sae_file), "model": type(sae).__name__, "d_in": sae.d_in,
            "d_sae": sae.d_sae, "lm": OmegaConf.select(train_cfg, "lm.loader._target_") if extractor else None,
            "layer": train_cfg.lm.layer if extractor else None, "site": train_cfg.lm.site if extractor else None,
            "data": OmegaConf.select(train_cfg, "data.source._target_"), "val_windows": len(dm.val_idx),
            "evaluated_windows": len(held_out_indices(dm, cfg)),
        },
        **evaluation.results,
        "hparams": hparams_of(train_cfg, sae),
        "figures": [],
    }
    with stages.stage("figures", "figures, TensorBoard" if cfg.tensorboard else "figures"):
        for name, fig in evaluation.figures.items():
            path = run_dir.figure(name)
            quiet(fig.savefig, path, dpi=110)
            results["figures"].append(str(path))
        if cfg.tensorboard:
            log_tensorboard(run_dir, results, evaluation.figures, evaluation.accumulators["sparsity"].log10_frequency)
    results["seconds"]["total"] = time.perf_counter() - t_start
    run_dir.write(run_dir.eval_json, json.dumps(_finite(results), indent=1, default=_json_default, allow_nan=False))
    run_dir.write(run_dir.eval_md, to_markdown(results))
    return evaluation._replace(results=results)


def _finite(tree: Any) -> Any:
    """NaN / inf -> None (null), so eval.json is standard JSON."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_finite(v) for v in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def _json_default(obj):
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item() if obj.ndim == 0 else obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
