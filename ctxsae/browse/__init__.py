"""The feature browser: what each latent does on the held-out windows, as a static site that opens from disk.

    held-out windows -> SAE -> per-latent firing, run, flicker and onset counts; each latent's top windows  (pass 1)
        -> the latents that get a page: the ``n_features`` most active, the probe's best, any named
        -> SAE again on the held-out windows -> their code rows, value histograms, one attribution each    (pass 2)
    + the LM's final norm and unembedding: each page's logit effect (text data only)
    + the language-switch probe (fortunes + an LM): a switch AUROC per latent

Pass 1 is the evaluation's held-out pass (``ctxsae.eval``) with the browser's accumulator
(``PeaksAndOnsets``) added, and the probe is the evaluation's: ``evaluate_and_browse`` runs them
once for both, and the browser alone runs them without the LM passes. Pass 2 reads only the
latents that get a page, which are known after pass 1. ``collect_site`` returns a ``Site`` and
``compare_runs`` a ``Comparison``; ``ctxsae.browse.html`` renders them into a static site
(``write_run_site`` does all of it for an opened run).
The data lives in ``ctxsae.browse.site``, the pages in ``ctxsae.browse.html``.
"""

from __future__ import annotations

from pathlib import Path

from ctxsae.browse.html import write_site
from ctxsae.browse.site import (
    BrowseConfig, browser_accumulators, check_features, check_same_windows, collect_site, collect_summary, compare_runs,
)
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.run import Evaluation, evaluate_run
from ctxsae.train.run_dir import OpenRun, open_run


def write_run_site(run: OpenRun, cfg: BrowseConfig, baseline: OpenRun | None = None,
                   evaluation: Evaluation | None = None) -> Path:
    """Collect and write the browser of an opened run into <run>/browse/ (with compare.html given a baseline)."""
    if baseline is not None:
        check_same_windows(run, baseline)
    site = collect_site(run.sae, run.dm, cfg, run.extractor, run.train_cfg.data.n_ctx, run.run_dir.name, evaluation)
    comparison = None
    if baseline is not None:
        summary = collect_summary(baseline.sae, run.dm, cfg.eval)
        tokenizer = run.extractor.loaded.tokenizer if run.extractor is not None else None
        comparison = compare_runs([baseline.sae, run.sae], [summary, site.summary],
                                  [baseline.run_dir.name, run.run_dir.name], run.dm, cfg, tokenizer)
    return write_site(site, run.run_dir.browse, comparison)


def evaluate_and_browse(cfg: EvalConfig) -> tuple[Evaluation, Path]:
    """``evaluate.py report=html``: the evaluation, its held-out pass and probe shared with the browser."""
    browse = BrowseConfig(eval=cfg)
    run = open_run(cfg.run, cfg.device, with_lm=True)
    check_features(run.sae, browse)
    evaluation = evaluate_run(cfg, run, browser_accumulators(run.sae, browse))
    return evaluation, write_run_site(run, browse, evaluation=evaluation)
