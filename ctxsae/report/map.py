"""The map: where does context pay on real text? One section per cell of a sweep, written as Markdown.

    python -m ctxsae.report.map outputs/sweeps/map_scan [--out docs] [--baseline TopKSAE]

A *cell* is one place in activation space: the text (data source and window length) and the hook
(LM layer and site). Within a cell the runs share everything but architecture and sparsity (``setting``
in :mod:`ctxsae.report`), so each contextual run is read against the cell's TopK front at its held-out FVU:

* ``l0_ratio``: its novel L0 over the front's L0 at that FVU (< 1: context saves codes);
* ``l0_effective_ratio``: its effective L0 (what the decoder reads) over the same;
* ``l0_paid_ratio``: for a context that reads earlier activations rather than earlier codes (the
  attention SAE), novel L0 plus the values it read that were never decoded where they came from
  (``unsent_sources_per_position``: what sending them once would cost), over the same;
* ``ce_delta``: its CE loss recovered minus the front's, linearly interpolated at the same FVU
  (evaluated runs only).

Beside them, the two bounds from ``python evaluate.py`` (``ctxsae.metrics.persistence``): the
persistence oracle of each TopK run (at 30% tolerance: ``changed_share``, the share of its codes
that are new or changed, what a perfect hold scheme whose held values end for free would still
send; ``held_share``, the same when every stop is sent too) and the dictionary-free region-variance
share (variance explained by the causal running mean of the document, block or language run),
and ``region_l0_ratio``, that share turned into an L0 ratio on the cell's front; ``residual_var_document``
and ``residual_l0_ratio``, the same for the TopK run's own residual (what a region code could add to it);
``mean_oracle_l0_ratio``, the lowest novel-L0 ratio of the cell's ``MeanOracleSAE`` runs (TopK given the
document's earlier mean for free: the region bound trained rather than assumed). Oracle runs are bounds,
never a cell's best arm.

What a ratio says depends on how long the dictionaries trained (a better-trained TopK dictionary
codes more of what context would carry), so each cell also gets the novel-L0 ratio *along training*:
every validation point of each run (``val/fvu``, ``val/l0`` in its TensorBoard events, at training
tokens seen) read against the front of the cell's TopK runs at the same number of tokens.

Writes ``<out>/results.md``, ``<out>/map/<cell>.png`` (L0 against FVU per architecture),
``<out>/map/<cell>-along_training.png`` and ``<out>/map/changed_share_by_layer.png``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctxsae.eval.markdown import flatten
from ctxsae.report.plots import line_plot, pareto_plot
from ctxsae.report.sweep import at_fvu, baseline_front, job_dirs, l0_on_front, markdown, matched_l0, row_of
from ctxsae.train.run_dir import RunDir

# map column -> flattened eval.json key (beside the sweep report's columns)
BOUNDS = {
    "already_active": "persistence/already_active",
    "held_share": "persistence/held_share_0.3",
    "changed_share": "persistence/changed_share_0.3",
    "fvu_held": "persistence/fvu_held_0.3",
    "region_var_document": "region_bound/explained_document",
    "region_var_block": "region_bound/explained_block",
    "region_var_language": "region_bound/explained_language",
    "residual_var_document": "region_bound/residual_explained_document",
    "residual_var_block": "region_bound/residual_explained_block",
    "residual_var_language": "region_bound/residual_explained_language",
    "onset_precision_code": "regions/kind/code/onset_precision",
    "onset_recall_code": "regions/kind/code/onset_recall",
    "switch_boundary_auroc": "language_switch/boundary_auroc_heldout",
    "language_auroc": "language_switch/language_auroc_heldout",
    "l0_unsent": "context/unsent_sources_per_position",
}

RUN_COLUMNS = ("arm", "fvu", "l0", "l0_effective", "l0_ratio", "l0_effective_ratio", "l0_paid_ratio", "ce_recovered", "ce_delta",
               "flicker", "onset_precision_code", "switch_auroc", "language_auroc", "already_active", "changed_share", "held_share", "fvu_held",
               "residual_var_document")
CELL_COLUMNS = ("cell", "topk_fvu", "changed_share", "held_share", "region_var_document", "region_var_block",
                "region_l0_ratio", "residual_var_document", "residual_l0_ratio", "mean_oracle_l0_ratio", "best_arm", "l0_ratio", "l0_effective_ratio",
                "l0_paid_ratio", "ce_delta")
#: Architectures that read what no code sent, on purpose: bounds, reported beside the designs, never as one.
ORACLES = ("MeanOracleSAE",)


def cell_of(job: Path) -> str:
    """Text, window length and hook of a run (and its seed if not 0), as a file-name-safe label:
    ``debian_reference-n512-L8``, ``debian_reference-n512-L8-s1``."""
    cfg = RunDir(job).load_config()
    data = str(OmegaConf.select(cfg, "data.source._target_", default="synthetic")).rsplit(".", 1)[-1]
    data = {"DebianReferenceSource": "debian_reference", "FortunesSource": "fortunes"}.get(data, data)
    site = OmegaConf.select(cfg, "lm.site", default="resid_post")
    hook = f"L{OmegaConf.select(cfg, 'lm.layer', default='?')}" + ("" if site == "resid_post" else f"-{site}")
    seed = OmegaConf.select(cfg, "seed", default=0)
    return f"{data}-n{OmegaConf.select(cfg, 'data.n_ctx', default='?')}-{hook}" + (f"-s{seed}" if seed else "")


def map_rows(sweep: Path, baseline: str) -> list[dict]:
    """The sweep report's rows of the finished runs, with their cell, bounds and matched-FVU figures."""
    rows = []
    for job in job_dirs(sweep):
        row = row_of(job, sweep)
        if row["status"] != "finished":
            continue
        evaluated = RunDir(job).eval_json
        flat = flatten(json.loads(evaluated.read_text())) if evaluated.exists() else {}
        row |= {column: flat.get(key) for column, key in BOUNDS.items()}
        row["cell"] = cell_of(job)
        row["arm"] = f"{row['group']} k={row['k']}" if row["k"] is not None else row["group"]
        rows.append(row)
    matched = {m["run"]: m for m in matched_l0(rows, baseline)}
    for row in rows:
        m = matched.get(row["run"], {})
        row["l0_ratio"], row["l0_effective_ratio"] = m.get("l0_ratio"), m.get("l0_effective_ratio")
        paid = m.get("baseline_l0") and row["l0_unsent"] is not None
        row["l0_paid_ratio"] = (row["l0"] + row["l0_unsent"]) / m["baseline_l0"] if paid else None
        base = [r for r in rows if r["model"] == baseline and r["setting"] == row["setting"]]
        ce = at_fvu(sorted((r["fvu"], r["ce_recovered"]) for r in base if r["ce_recovered"] is not None), row["fvu"])
        row["ce_delta"] = row["ce_recovered"] - ce if row["model"] != baseline and None not in (ce, row["ce_recovered"]) else None
    return rows


def validation_curve(job: Path) -> dict[int, tuple[float, float, float]]:
    """{training tokens: (FVU, novel L0, effective L0) on the validation split} of a run, from its TensorBoard
    events (empty where it has none)."""
    tb = RunDir(job).tensorboard
    if not tb.is_dir():
        return {}
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    tags = ("val/fvu", "val/l0", "val/l0_effective")
    if not set(tags) <= set(events.Tags()["scalars"]):
        return {}
    # a resumed run repeats the steps after its checkpoint: the later value stands
    fvu, l0, l0_effective = ({e.step: e.value for e in events.Scalars(tag)} for tag in tags)
    return {step: (fvu[step], l0[step], l0_effective[step])
            for step in sorted(fvu) if step in l0 and step in l0_effective}


def ratio_along_training(sweep: Path, rows: list[dict], baseline: str) -> dict[str, dict[int, float]]:
    """{run: {training tokens: novel-L0 ratio at matched validation FVU}} of the non-baseline runs among ``rows``
    (one cell): each validation point read against the baseline runs' front at the same number of tokens."""
    curves = {r["run"]: validation_curve(sweep / r["run"]) for r in rows}
    along = defaultdict(dict)
    for step in sorted({step for curve in curves.values() for step in curve}):
        at_step = [r | dict(zip(("fvu", "l0", "l0_effective"), curves[r["run"]][step]))
                   for r in rows if step in curves[r["run"]]]
        for m in matched_l0(at_step, baseline):
            if m["l0_ratio"] is not None:
                along[m["run"]][step] = m["l0_ratio"]
    return dict(along)


def along_training_markdown(along: dict[str, dict[int, float]], arms: dict[str, str]) -> str:
    """One row per run, one column per number of training tokens."""
    label = {step: f"{step / 1e6:.2f}M" for curve in along.values() for step in curve}
    rows = [{"run": run, "arm": arms[run]} | {label[step]: ratio for step, ratio in curve.items()}
            for run, curve in sorted(along.items())]
    return markdown(rows, ("run", "arm", *(label[step] for step in sorted(label))))


def along_training_plot(along: dict[str, dict[int, float]], arms: dict[str, str], baseline: str,
                        path: Path) -> Figure:
    lines = {arms[run]: [(step / 1e6, ratio) for step, ratio in curve.items()] for run, curve in along.items()}
    return line_plot(lines, "training tokens (M)", f"novel L0 / {baseline} front's L0 at the same validation FVU",
                     path, reference=1.0)


def region_l0_ratio(rows: list[dict], run: dict, baseline: str, of: str = "region_var") -> float | str | None:
    """The L0 ratio a perfect causal region code would allow at ``run``'s FVU, read off the cell's baseline front.

    If the region's running mean explained its share r of the variance for free (the largest of the
    document, block and language shares), the novel codes would only need to bring the FVU to
    FVU + r: the front's L0 there over its L0 at FVU. With ``of="region_var"`` (the running mean of x)
    this is optimistic: it takes the two to add up, while the codes already explain most of the
    region mean. ``of="residual_var"`` reads the share of the run's own residual instead (the running
    mean of its past errors), which is what a region code could add to this dictionary. Past the
    front's sparsest run it is only known to be below that run's ratio ("< 0.5"); None where the run
    is off the front.
    """
    shares = [run.get(f"{of}_{region}") for region in ("document", "block", "language")]
    r = max([s for s in shares if s is not None], default=None)
    if r is None:
        return None
    front = baseline_front(rows, run["setting"], baseline)
    if len(front) < 2:  # one run is no front to read a slope from
        return None
    target = run["fvu"] + max(r, 0.0)
    at_fvu, with_region = l0_on_front(front, run["fvu"]), l0_on_front(front, target)
    if at_fvu and with_region:
        return with_region / at_fvu
    if at_fvu and front and target > front[-1][0]:  # past the front's sparsest run: below its L0 there
        return f"< {front[-1][1] / at_fvu:.3g}"
    return None


def cell_summary(cell: str, rows: list[dict], baseline: str) -> dict:
    """One line of the map: the baseline's middle run and its bounds, and the contextual run with the lowest ratio."""
    base = sorted((r for r in rows if r["model"] == baseline), key=lambda r: r["l0"])
    middle = base[len(base) // 2] if base else {}
    matched = [r for r in rows if r["model"] != baseline and r["l0_ratio"] is not None]
    best = min((r for r in matched if r["model"] not in ORACLES), key=lambda r: r["l0_ratio"], default={})
    oracle = min((r["l0_ratio"] for r in matched if r["model"] in ORACLES), default=None)
    return {"cell": cell, "topk_fvu": middle.get("fvu"), "changed_share": middle.get("changed_share"),
            "held_share": middle.get("held_share"),
            "region_var_document": middle.get("region_var_document"), "region_var_block": middle.get("region_var_block"),
            "region_l0_ratio": region_l0_ratio(rows, middle, baseline) if middle else None,
            "residual_var_document": middle.get("residual_var_document"),
            "residual_l0_ratio": region_l0_ratio(rows, middle, baseline, of="residual_var") if middle else None,
            "mean_oracle_l0_ratio": oracle,
            "best_arm": best.get("arm"), "l0_ratio": best.get("l0_ratio"), "l0_effective_ratio": best.get("l0_effective_ratio"),
            "l0_paid_ratio": best.get("l0_paid_ratio"), "ce_delta": best.get("ce_delta")}


def changed_share_plot(rows: list[dict], baseline: str, path: Path) -> Figure:
    """The oracle's share of new or changed codes of each baseline run against its layer, one line per text and k."""
    lines = defaultdict(list)
    for r in rows:
        if r["model"] == baseline and r["changed_share"] is not None and r["layer"] is not None:
            lines[f"{r['cell'].rsplit('-L', 1)[0]} k={r['k']}"].append((r["layer"], r["changed_share"]))
    return line_plot(lines, "layer (resid_post)", "codes new or changed by > 30% / TopK L0 (hold oracle)", path)


def results_markdown(sweep: Path, rows: list[dict], baseline: str, figures: Path) -> str:
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[r["cell"]].append(r)
    summary = [cell_summary(cell, cell_rows, baseline) for cell, cell_rows in sorted(by_cell.items())]
    parts = [
        "# The map: where does context pay on real text?\n",
        (f"Generated by `python -m ctxsae.report.map {sweep}` from {len(rows)} finished runs (the commands that "
        "trained and evaluated them head the sweep files `sweeps/map_*.yaml`). Held-out windows only.\n"),
        (f"Per cell: the {baseline} run in the middle of the front (its FVU, the hold oracle's shares, the "
         "region-variance shares and the L0 ratio they would allow on the front), and the contextual run with the "
         "lowest novel-L0 ratio at matched FVU. Columns: `ctxsae/report/map.py`; findings: the README's measured "
         "section.\n"),
        markdown(summary, CELL_COLUMNS),
        f"![oracle by layer]({figures.name}/changed_share_by_layer.png)\n",
    ]
    for cell, cell_rows in sorted(by_cell.items()):
        pareto_plot(cell_rows, x="l0", y="fvu", group="group", path=figures / f"{cell}.png")
        cell_rows = sorted(cell_rows, key=lambda r: (r["model"] != baseline, r["group"], r["l0"]))
        parts += [f"## {cell}\n", markdown(cell_rows, RUN_COLUMNS), f"![{cell}]({figures.name}/{cell}.png)\n"]
        along = ratio_along_training(sweep, cell_rows, baseline)
        if along:
            arms = {r["run"]: r["arm"] for r in cell_rows}
            along_training_plot(along, arms, baseline, figures / f"{cell}-along_training.png")
            parts += [f"Novel-L0 ratio at matched FVU along training (validation split, against the {baseline} runs' "
                      "front at the same number of training tokens; blank: outside the front's FVU range, e.g. worse "
                      "than its sparsest run):\n", along_training_markdown(along, arms),
                      f"![{cell} along training]({figures.name}/{cell}-along_training.png)\n"]
    return "\n".join(parts)


def write_map(sweep: Path, out: Path, baseline: str = "TopKSAE") -> list[dict]:
    figures = out / "map"
    figures.mkdir(parents=True, exist_ok=True)
    rows = map_rows(sweep, baseline)
    changed_share_plot(rows, baseline, figures / "changed_share_by_layer.png")
    (out / "results.md").write_text(results_markdown(sweep, rows, baseline, figures))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxsae.report.map", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep directory (e.g. outputs/sweeps/map_scan)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where results.md and map/ go (default: docs)")
    parser.add_argument("--baseline", default="TopKSAE", help="the architecture the others are matched against")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        raise SystemExit(f"error: {args.sweep} is not a directory: pass the sweep's output directory (hydra.sweep.dir)")
    rows = write_map(args.sweep, args.out, args.baseline)
    print(f"{len(rows)} finished runs in {len({r['cell'] for r in rows})} cells; written to {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
