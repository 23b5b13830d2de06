"""Sweep figures, drawn on standalone matplotlib Figures (no pyplot state, no display needed: Agg).

``pareto_plot``: one point per run, e.g. L0 against FVU, grouped by SAE family, each family's
Pareto front drawn as a step line. (One run's heatmaps are evaluation figures: ``ctxsae.eval.figures``.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure


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


def line_plot(lines: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, path: str | Path,
              reference: float | None = None) -> Figure:
    """One line per name through its (x, y) points in ascending x, a grey line at y = ``reference`` if given;
    written to ``path``."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in sorted(lines.items()):
        ax.plot(*zip(*sorted(points)), marker="o", label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return fig
