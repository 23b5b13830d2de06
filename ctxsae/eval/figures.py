"""Figures of an evaluation: activation heatmaps (standalone matplotlib Figures: no pyplot state, no
display needed), and everything logged to the run's TensorBoard."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ctxsae.data.windows import token_texts
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.markdown import flatten
from ctxsae.eval.probe import ProbeCodes
from ctxsae.models.base import SAE
from ctxsae.train.run_dir import RunDir


def token_label(text: str) -> str:
    """A token's text, visible on an axis: newlines and tabs as symbols, leading spaces as dots."""
    text = text.replace("\n", "⏎").replace("\t", "⇥")
    stripped = text.lstrip(" ")
    return "·" * (len(text) - len(stripped)) + stripped


def activation_heatmap(
    codes_TF: Tensor, effective_TF: Tensor, latents: Sequence[int], labels: Sequence[str] | None = None,
    title: str = "", marks: Sequence[int] = (), path: str | Path | None = None,
) -> Figure:
    """Rows ``z i`` (novel) and ``a i`` (effective) for each latent i over the T positions of one window.

    Each latent's two rows are scaled by that latent's largest |value| in the window, so weak and
    strong latents are equally visible and signed diffs (a reset is negative) read as blue.
    ``labels``: one text per position (tokens); ``marks``: positions to draw a vertical line at.
    """
    rows, names = [], []
    for i in latents:
        z, a = codes_TF[:, i].float().cpu().numpy(), effective_TF[:, i].float().cpu().numpy()
        scale = max(np.abs(z).max(), np.abs(a).max(), 1e-12)
        rows += [z / scale, a / scale]
        names += [f"z {i}", f"a {i}"]
    T = codes_TF.shape[0]
    fig = Figure(figsize=(min(2 + 0.13 * T, 40), 1.2 + 0.28 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.array(rows).reshape(len(rows), T), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    for r in range(2, len(rows), 2):
        ax.axhline(r - 0.5, color="k", lw=0.5)
    for m in marks:
        ax.axvline(m - 0.5, color="green", lw=1.5)
    if labels is not None:
        ax.set_xticks(range(T), [token_label(s) for s in labels], rotation=90, fontsize=6)
    else:
        ax.set_xlabel("position")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01, label="code / latent's max |code|")
    if path is not None:
        quiet(fig.savefig, path, dpi=110)
    return fig


def token_labels(tokenizer, ids) -> list[str] | None:
    if tokenizer is None or int(ids.min()) < 0:  # synthetic windows have no text (ids -1)
        return None
    return token_texts(tokenizer, [int(i) for i in ids])


def top_latents(effective_TF: torch.Tensor, valid_T: torch.Tensor, k: int, first: list[int] = ()) -> list[int]:
    activity = effective_TF[valid_T].abs().sum(0)
    activity[list(first)] = -1
    return list(first) + activity.topk(min(k - len(first), len(activity))).indices.tolist()


@torch.no_grad()
def heatmaps(sae: SAE, dm, cfg: EvalConfig, tokenizer, probe: ProbeCodes | None, results: dict) -> dict[str, Figure]:
    """Novel and effective codes of the most active latents over held-out windows (and one probe window)."""
    figures = {}
    name = type(sae).__name__
    ds, device = dm.dataset("val"), next(sae.parameters()).device
    for w in range(min(cfg.heatmap_windows, len(ds))):
        b = ds[w]
        out = sae(b.x_BTD.mul_(dm.unit_of(sae)).to(device), b.context_start_BT.to(device))
        latents = top_latents(out.effective_codes[0].cpu(), b.mask_BT[0], cfg.heatmap_latents)
        starts = [int(t) for t in b.doc_start_BT[0].nonzero() if t > 0]
        figures[f"heatmap_val{w}"] = activation_heatmap(
            out.codes[0], out.effective_codes[0], latents, token_labels(tokenizer, b.tokens_BT[0]),
            f"{name}: held-out window {w}, most active latents (green: document start)", marks=starts,
        )
    if probe is not None:
        sw, codes, effective = probe
        found = results["language_switch"]
        switch_rows = (~sw.control_N).nonzero().flatten()
        held_out = switch_rows[(sw.source_N[switch_rows] // 2) % 2 == 1]
        n = int(held_out[0] if len(held_out) else switch_rows[0])  # a switch window the latent was not picked on
        pair = sw.pair_N[n].split("-")
        language = [found["language_auroc_by_language"][x]["latent"] for x in pair]
        latents = top_latents(effective[n], sw.valid_NT[n], cfg.heatmap_latents,
                               first=list(dict.fromkeys([found["latent"], *language])))
        T = int(sw.valid_NT[n].nonzero().max()) + 1
        figures["heatmap_switch"] = activation_heatmap(
            codes[n, :T], effective[n, :T], latents, token_labels(tokenizer, sw.tokens_NT[n, :T]),
            f"{name}: language switch {sw.pair_N[n]} (green); first rows: best switch latent {found['latent']}, "
            f"then the best {pair[0]} and {pair[1]} latents {language}", marks=[int(sw.switch_N[n])],
        )
    return figures


def scalars(results: dict) -> dict[str, float]:
    """The numeric figures of ``results`` as a flat dict (what TensorBoard and the tables show)."""
    not_figures = ("run", "hparams", "skipped", "figures", "seconds")
    sections = {k: v for k, v in results.items() if k not in not_figures and not k.startswith("_")}
    return {k: float(v) for k, v in flatten(sections).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_tensorboard(run_dir: RunDir, results: dict, figures: dict[str, Figure], log10_freq: torch.Tensor) -> None:
    """Scalars under eval/..., with the hparams (HParams view), the frequency histogram and the heatmaps.

    Written to <run>/tb beside the training events, into files ending in ``.eval``: a re-evaluation
    replaces them, so a run never holds two evaluations.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    for old in run_dir.tensorboard.glob("events.out.tfevents.*.eval"):
        old.unlink()
    logger = TensorBoardLogger(save_dir=str(run_dir.path), name=run_dir.tensorboard.name, version="",
                               default_hp_metric=False, filename_suffix=".eval")
    metrics = {f"eval/{k}": v for k, v in scalars(results).items() if math.isfinite(v)}
    logger.log_hyperparams(results["hparams"], metrics=metrics, step=0)
    if len(log10_freq):
        logger.experiment.add_histogram("eval/sparsity/log10_firing_frequency", log10_freq.numpy(), 0)
    for name, fig in figures.items():
        quiet(logger.experiment.add_figure, f"eval/{name}", fig, 0, close=False)
    logger.finalize("success")


def quiet(fn, *args, **kwargs):
    """Drawing CJK tokens with the default font only warns about missing glyphs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)

