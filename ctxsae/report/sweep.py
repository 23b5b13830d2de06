"""Aggregate a sweep: one row per run, a CSV, a Markdown table and Pareto plots.

    python -m ctxsae.report outputs/sweeps/pareto [--out DIR] [--baseline TopKSAE]

Every job directory under the sweep (one holding Hydra's ``.hydra/`` or a ``config.yaml``) becomes
a row, finished or not: failed and unfinished runs are listed with their status, never dropped.
Figures come from ``summary.json`` (training) and, where ``python evaluate.py`` ran, ``eval.json``.

The headline question, "fewer codes at equal reconstruction?", is answered by ``matched_l0``: each
run's L0 divided by the baseline's L0 at the same held-out FVU, read off the Pareto front of the
baseline runs *of the same setting* (data, LM and hook, d_sae, training length: only architecture and
sparsity may differ), log L0 interpolated linearly in FVU between two neighbouring points, never
extrapolated.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from ctxsae.eval.markdown import flatten
from ctxsae.report.plots import pareto_front, pareto_plot
from ctxsae.train.run_dir import RunDir

# column -> where it comes from: "summary:<key>" or "eval:<flattened key>" or "config:<dotted key>"
COLUMNS = {
    "run": None,
    "status": None,
    "group": None,
    "model": "summary:model",
    "k": "config:model.k",
    "sparsity_coef": "config:loss.sparsity",
    "d_sae": "config:model.d_sae",
    "layer": "config:lm.layer",
    "n_ctx": "config:data.n_ctx",
    "fvu": "summary:fvu",
    "l0": "summary:l0",
    "l0_effective": "summary:l0_effective",
    "ce_recovered": "eval:downstream/ce_recovered_zero",
    "flicker": "eval:temporal/flicker_effective/weighted",  # novel codes fire once by design
    "switch_auroc": "eval:language_switch/auroc_heldout",
    "tokens_per_s": "summary:train_tokens_per_s",
    "gt_l0": "eval:synthetic/gt_l0",  # synthetic data: the ground truth's novel events per position
    "gt_dense_l0": "eval:synthetic/gt_dense_l0",  # ... and its active features per position
    "recovery": "eval:synthetic/recovery",
    "onset_precision": "eval:synthetic/onset_decoder_precision",
    "onset_recall": "eval:synthetic/onset_decoder_recall",
    "overrides": None,
}


def job_dirs(sweep: Path) -> list[Path]:
    """Every job directory: it has Hydra's .hydra/ (written at launch) or train.py's config.yaml."""
    launched = {p.parent.parent for p in sweep.rglob(".hydra/config.yaml")}
    return sorted(launched | {p.parent for p in sweep.rglob("config.yaml") if p.parent.name != ".hydra"})


def status_of(run: RunDir) -> str:
    if run.summary.exists():
        return "finished"
    if run.failed.exists():  # train.py writes it when a run ends in an error
        return "failed: " + run.failed.read_text().strip()[:120]
    return "unfinished"  # still running, killed, or never started


def row_of(job: Path, sweep: Path) -> dict:
    run = RunDir(job)
    summary = json.loads(run.summary.read_text()) if run.summary.exists() else {}
    evaluated = flatten(json.loads(run.eval_json.read_text())) if run.eval_json.exists() else {}
    cfg = run.load_config()
    row = {"run": str(job.relative_to(sweep)), "status": status_of(run)}
    for column, source in COLUMNS.items():
        if source is None:
            continue
        kind, key = source.split(":", 1)
        value = {"summary": summary.get(key), "eval": evaluated.get(key), "config": OmegaConf.select(cfg, key, default=None)}[kind]
        row[column] = value
    if row["model"] is None:  # unfinished: name the architecture from its config target
        row["model"] = str(OmegaConf.select(cfg, "model._target_", default="?")).rsplit(".", 1)[-1]
    launched = job / ".hydra"
    overrides = OmegaConf.load(launched / "overrides.yaml") if (launched / "overrides.yaml").exists() else []
    row["overrides"] = " ".join(o for o in overrides if not o.startswith("+sweep="))
    # Variants of one class are separate curves: name them by their ablation choice (conf/ablation/), by a
    # loss chosen on the command line or by the sweep instead of by the model's config (loss=temporal_contrastive)
    # and by the model fields set there, but for its sparsity (k) and width (part of the setting).
    ablation = OmegaConf.select(OmegaConf.load(launched / "hydra.yaml"), "hydra.runtime.choices.ablation",
                                default=None) if (launched / "hydra.yaml").exists() else None
    fields = [o.removeprefix("model.") for o in overrides if o.startswith("model.") and o.split("=")[0] not in ("model.k", "model.d_sae")]
    variant = ([ablation] if ablation else []) + [o for o in overrides if o.startswith("loss=")] + fields
    row["group"] = f"{row['model']} ({', '.join(variant)})" if variant else row["model"]
    row["setting"] = setting_of(cfg)
    return row


def setting_of(cfg) -> str:
    """What a run's L0 may only be matched within: everything but the architecture and its sparsity."""
    keys = ("data", "lm", "cache", "optim", "max_tokens", "model.d_sae", "seed")
    return json.dumps({k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                       for k in keys if (v := OmegaConf.select(cfg, k, default=None)) is not None}, sort_keys=True)


def matched_l0(rows: list[dict], baseline: str = "TopKSAE") -> list[dict]:
    """For each finished non-baseline run: its novel and effective L0 over the baseline's L0 at its FVU,
    the baseline runs being those of the same setting."""
    finished = [r for r in rows if r["status"] == "finished"]
    fronts = {setting: baseline_front(finished, setting, baseline) for setting in {r["setting"] for r in finished}}
    matched = []
    for r in finished:
        if r["model"] == baseline:
            continue
        l0_base = l0_on_front(fronts[r["setting"]], r["fvu"])
        matched.append({"run": r["run"], "group": r["group"], "fvu": r["fvu"], "l0": r["l0"], "baseline_l0": l0_base,
                        "l0_ratio": r["l0"] / l0_base if l0_base else None,
                        "l0_effective_ratio": r["l0_effective"] / l0_base if l0_base else None})
    return matched


def baseline_front(rows: list[dict], setting: str, baseline: str) -> list[tuple[float, float]]:
    """(FVU, L0) of the baseline's Pareto-optimal finished runs of ``setting``, FVU ascending."""
    base = [r for r in rows if r["model"] == baseline and r["setting"] == setting and r["status"] == "finished"]
    front = pareto_front([r["l0"] for r in base], [r["fvu"] for r in base])
    return sorted((base[i]["fvu"], base[i]["l0"]) for i in front)


def at_fvu(points: list[tuple[float, float]], fvu: float, log: bool = False) -> float | None:
    """The value at ``fvu`` of (FVU, value) points in ascending FVU, interpolated between the two neighbours
    (linearly in the value, or in its log); None outside their range."""
    for (f0, v0), (f1, v1) in itertools.pairwise(points):
        if f0 <= fvu <= f1:
            w = (fvu - f0) / (f1 - f0) if f1 > f0 else 0.0
            return math.exp((1 - w) * math.log(v0) + w * math.log(v1)) if log else v0 + (v1 - v0) * w
    return None


def l0_on_front(front: list[tuple[float, float]], fvu: float) -> float | None:
    """L0 on the front (FVU ascending) at ``fvu``, log-linear between neighbours; a one-run front only at its own
    FVU; None outside its range."""
    if len(front) == 1:
        return front[0][1] if math.isclose(front[0][0], fvu) else None
    return at_fvu(front, fvu, log=True)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], columns=tuple(COLUMNS)) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([head, rule, *("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows)]) + "\n"


def matched_markdown(matched: list[dict], baseline: str) -> str:
    if not matched:
        return ""
    text = (f"\n## L0 at matched FVU, against {baseline}\n\nbaseline_l0: the {baseline} Pareto front's L0 at the run's "
            "held-out FVU, among the runs of the same setting (blank: the FVU is outside the front's range, "
            "no extrapolation).\n\n")
    return text + markdown(matched, ("run", "group", "fvu", "l0", "baseline_l0", "l0_ratio", "l0_effective_ratio"))


def report(sweep: Path, out: Path | None = None, baseline: str = "TopKSAE") -> list[dict]:
    out = out or sweep
    out.mkdir(parents=True, exist_ok=True)
    rows = [row_of(job, sweep) for job in job_dirs(sweep)]
    rows.sort(key=lambda r: (r["group"], r.get("l0") or 0))
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.md").write_text(markdown(rows) + matched_markdown(matched_l0(rows, baseline), baseline))
    finished = [r for r in rows if r["status"] == "finished"]
    pareto_plot(finished, x="l0", y="fvu", group="group", path=out / "pareto_l0_fvu.png")
    pareto_plot(finished, x="l0", y="ce_recovered", group="group", path=out / "pareto_l0_ce.png", maximize=True)
    _log_tensorboard(out, finished)
    return rows


def _log_tensorboard(out: Path, rows: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tb_report")) as writer:
        writer.add_figure("pareto/l0_vs_fvu", pareto_plot(rows, x="l0", y="fvu", group="group"))
        writer.add_figure("pareto/l0_vs_ce_recovered", pareto_plot(rows, x="l0", y="ce_recovered", group="group", maximize=True))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxsae.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun directory (e.g. outputs/sweeps/pareto)")
    parser.add_argument("--out", type=Path, default=None, help="where to write report.csv/.md and the plots (default: the sweep dir)")
    parser.add_argument("--baseline", default="TopKSAE", help="the group other runs' L0 is matched against (default: TopKSAE)")
    args = parser.parse_args()
    if not args.sweep.is_dir():
        raise SystemExit(f"error: {args.sweep} is not a directory: pass the sweep's output directory (hydra.sweep.dir)")
    rows = report(args.sweep, args.out, args.baseline)
    print(markdown(rows) + matched_markdown(matched_l0(rows, args.baseline), args.baseline))
    counts = {s: sum(r["status"].startswith(s) for r in rows) for s in ("finished", "failed", "unfinished")}
    print(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; written to {args.out or args.sweep}")

