"""Figures, drawn on standalone matplotlib Figures (no pyplot state, no display needed: Agg).

* ``pareto_plot``: one point per run, e.g. L0 against FVU, grouped by SAE family, each family's
  Pareto front drawn as a step line. For sweep reports; evaluation of one run does not use it.
* ``activation_heatmap``: a few latents over one window, novel and effective code rows, the
  window's tokens along the x axis.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


def pareto_front(xs: Sequence[float], ys: Sequence[float], maximize: bool = False) -> list[int]:
    """Indices of the points no other point beats on both, by x: lower x is better, and lower y
    (or higher y with ``maximize``, e.g. CE loss recovered)."""
    sign = -1 if maximize else 1
    order = sorted(range(len(xs)), key=lambda i: (xs[i], sign * ys[i]))
    front, best_y = [], math.inf
    for i in order:
        if sign * ys[i] < best_y:
            front.append(i)
            best_y = sign * ys[i]
    return front


def pareto_plot(
    rows: Iterable[Mapping], x: str = "l0", y: str = "fvu", group: str = "model", path: str | Path | None = None,
    logx: bool = True, maximize: bool = False,
) -> Figure:
    """Scatter of ``rows`` (dicts, e.g. summary.json or flattened eval.json) with each group's Pareto front.

    Lower ``x`` is better; lower ``y`` too unless ``maximize`` (e.g. y="ce_recovered"). Rows without
    a finite ``x`` and ``y`` are skipped. Written to ``path`` if given.
    """
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        vx, vy = row.get(x), row.get(y)
        if isinstance(vx, (int, float)) and isinstance(vy, (int, float)) and math.isfinite(vx) and math.isfinite(vy):
            groups.setdefault(str(row.get(group, "?")), []).append((float(vx), float(vy)))
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in sorted(groups.items()):
        xs, ys = zip(*points)
        dots = ax.scatter(xs, ys, s=18, alpha=0.6, label=name)
        front = pareto_front(xs, ys, maximize)
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color=dots.get_facecolor()[0], lw=1.5)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(title=group, fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


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
        with warnings.catch_warnings():  # glyphs missing from the default font (CJK tokens) only warn
            warnings.simplefilter("ignore", UserWarning)
            fig.savefig(path, dpi=110)
    return fig
