"""eval.json -> eval.md: a headline table, then every figure by section, each with what it means."""

from __future__ import annotations

import math
from typing import Any

# What each figure means; per-latent summaries ("x/mean", "x/median", "x/weighted") share x's line.
MEANING = {
    "reconstruction/fvu": "fraction of variance unexplained (0 perfect, 1 = predicting the mean)",
    "reconstruction/nmse": "|x - x_hat|^2 / |x|^2",
    "reconstruction/mse": "mean |x - x_hat|^2 per position (normalised units, E|x|^2 = d_in)",
    "reconstruction/cosine": "mean cosine similarity of x and x_hat",
    "reconstruction/norm_ratio": "mean |x_hat| / |x| (< 1: shrinkage)",
    "sparsity/l0": "novel codes per position (what sparsity pays for)",
    "sparsity/l0_effective": "effective codes per position (active after context)",
    "sparsity/l1": "sum |novel code| per position",
    "sparsity/l1_effective": "sum |effective code| per position",
    "sparsity/dead_fraction": "latents never active on the evaluation set",
    "sparsity/dense_fraction": "latents whose novel code fires at > dense_threshold of positions",
    "sparsity/dense_fraction_effective": "latents whose effective code is active at > dense_threshold of positions",
    "sparsity/n_tokens": "positions evaluated",
    "temporal/flicker_effective": "on->off switches of the effective code per active position",
    "temporal/flicker_novel": "on->off switches of the novel code per firing",
    "temporal/run_length_effective": "active positions per run of the effective code",
    "temporal/run_length_novel": "firings per run of the novel code",
    "temporal/continuation_effective": "share of active positions already active at t-1",
    "temporal/continuation_novel": "share of firings that also fired at t-1",
    "temporal/region_fire_share": "in regions (gap-closed effective runs), share of positions where the novel code fires",
    "temporal/region_fires_per_region": "novel firings per region (a contextual ideal: 1)",
    "temporal/region_coverage": "in regions, share of positions where the effective code is active",
    "temporal/region_latent_fraction": "latents with at least one region",
    "temporal/region_mean_length": "mean region length in positions",
    "context/context_energy_share": "share of the reconstruction's centred energy carried by context",
    "context/carried_unsent_share": "share of the carried value read where its feature was not decoded (attention)",
    "context/unsent_sources_per_position": "distinct (position, feature) values so read, per position: the codes sending them would cost",
    "downstream/ce_clean": "next-token CE of the LM as it is",
    "downstream/ce_spliced": "CE with the SAE reconstruction spliced in at the hook",
    "downstream/ce_zero": "CE with the hook zero-ablated",
    "downstream/ce_mean": "CE with the hook mean-ablated",
    "downstream/ce_recovered_zero": "(CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 as clean, 0 as zero-ablated",
    "downstream/ce_recovered_mean": "the same against mean ablation",
    "downstream/kl_spliced": "KL(clean ‖ spliced) of next-token distributions, nats per position",
    "downstream/kl_zero": "KL(clean ‖ zero-ablated)",
    "downstream/kl_mean": "KL(clean ‖ mean-ablated)",
    "language_switch/auroc_heldout": "best switch latent's AUROC (negatives: half other positions, half same-language "
    "paragraph boundaries) on windows not used to pick it",
    "language_switch/auroc_select": "the same on the windows that picked it (optimistic)",
    "language_switch/elsewhere_auroc_heldout": "its AUROC against all other positions",
    "language_switch/boundary_auroc_heldout": "its AUROC against same-language paragraph boundaries (0.5: a paragraph latent)",
    "language_switch/control_hit_rate": "control windows where it fires at the same-language boundary",
    "language_switch/latency": "median tokens from the switch to its first firing",
    "language_switch/hit_rate": "windows where it fires within +-1 token of the switch",
    "language_switch/refire_rate": "its firings per position of language B after its first",
    "language_switch/false_alarm_rate": "its firings per position of language A",
    "language_switch/language_auroc_heldout": "mean over languages X of the best effective-code AUROC for 'this is X' (held out)",
    "language_switch/language_auroc_select": "the same on the windows that picked the latents (optimistic)",
    "persistence/already_active": "share of active codes already active at t-1 (same document)",
    "persistence/l0_held_0.1": "codes a perfect hold scheme sends per position (new, or changed by > 10%)",
    "persistence/l0_held_0.3": "the same at 30% tolerance",
    "persistence/held_share_0.1": "that over the SAE's L0: what holding codes could leave to pay for (10%)",
    "persistence/held_share_0.3": "the same at 30% tolerance",
    "persistence/fvu_held_0.1": "FVU of the decoder on the held codes (10%)",
    "persistence/fvu_held_0.3": "FVU of the decoder on the held codes (30%)",
    "region_bound/explained_document": "variance explained by the causal running mean of the document so far",
    "region_bound/explained_block": "... of the current block (labelled text)",
    "region_bound/explained_language": "... of the current language run (labelled text)",
    "region_bound/residual_explained_document": "FVU the running mean of the SAE's own past errors over the document takes off",
    "region_bound/residual_explained_block": "... over the current block (labelled text)",
    "region_bound/residual_explained_language": "... over the current language run (labelled text)",
    "synthetic/recovery": "mean best cosine of true features to decoder rows",
    "synthetic/gt_l0": "novel events per position in the ground truth (a perfect contextual code's L0)",
    "synthetic/gt_dense_l0": "active true features per position (a perfect per-token code's L0)",
    "synthetic/gt_region_fire_share": "in true regions, share of positions where the matched latent's novel code fires",
    "synthetic/gt_region_coverage": "in true regions, share of positions where its effective code is active",
    "synthetic/gt_region_flicker": "in true regions, on->off switches of its effective code per active position",
}

HEADLINE = [
    ("reconstruction/fvu", "FVU"),
    ("sparsity/l0", "L0 novel"),
    ("sparsity/l0_effective", "L0 effective"),
    ("downstream/ce_recovered_zero", "CE loss recovered (zero abl.)"),
    ("downstream/ce_recovered_mean", "CE loss recovered (mean abl.)"),
    ("downstream/kl_spliced", "KL(clean ‖ spliced)"),
    ("sparsity/dead_fraction", "dead latents"),
    ("sparsity/dense_fraction", "dense latents"),
    ("temporal/flicker_effective/weighted", "flicker (effective, firing-weighted)"),
    ("temporal/region_fire_share/weighted", "novel firings per region position"),
    ("temporal/region_fires_per_region/weighted", "novel firings per region"),
    ("context/context_energy_share", "reconstruction energy from context"),
    ("persistence/changed_share_0.3", "hold oracle: share of codes new or changed by > 30%"),
    ("persistence/held_share_0.3", "hold oracle: share still sent when every stop is sent (30%)"),
    ("region_bound/explained_document", "variance explained by the document's running mean"),
    ("region_bound/residual_explained_document", "FVU taken off by the running mean of the SAE's own errors"),
    ("language_switch/auroc_heldout", "language-switch AUROC (held out)"),
    ("language_switch/latency", "language-switch latency (tokens)"),
    ("language_switch/language_auroc_heldout", "'this is language X' AUROC (effective, held out)"),
    ("synthetic/recovery", "true-feature recovery"),
    ("synthetic/onset_decoder_precision", "onset precision (synthetic)"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or isinstance(v, int):
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _meaning(key: str) -> str:
    if key in MEANING:
        return MEANING[key]
    base, _, stat = key.rpartition("/")
    return f"{MEANING[base]} ({stat} over latents)" if base in MEANING else ""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists and None are kept as they are."""
    out = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _histogram(h: dict) -> str:
    edges, counts = h["log10_edges"], h["counts"]
    cells = [(f"[{edges[i]:g}, {edges[i + 1]:g})", c) for i, c in enumerate(counts) if c]
    head = "| log10 frequency | " + " | ".join(c[0] for c in cells) + " | never |"
    row = "| latents | " + " | ".join(str(c[1]) for c in cells) + f" | {h['never']} |"
    return "\n".join([head, "|---" * (len(cells) + 2) + "|", row])


def to_markdown(results: dict) -> str:
    run = results["run"]
    flat = flatten({k: v for k, v in results.items() if k not in ("run", "hparams", "figures", "skipped", "seconds")})
    where = f"LM {run['lm'].rsplit('.', 1)[-1]}, layer {run['layer']} {run['site']}" if run.get("lm") else "no LM"
    lines = [
        f"# Evaluation: {run['model']} (d_in {run['d_in']}, d_sae {run['d_sae']})",
        "",
        f"`{run['run_dir']}` · {where} · {run['evaluated_windows']} held-out windows, "
        f"{_fmt(results['sparsity']['n_tokens'])} positions · data {run['data'].rsplit('.', 1)[-1]}",
        "",
        "| headline | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_fmt(flat[k])} |" for k, label in HEADLINE if flat.get(k) is not None]
    for section in ("reconstruction", "sparsity", "temporal", "context", "downstream", "language_switch", "synthetic"):
        value = results.get(section)
        lines += ["", f"## {section.replace('_', ' ')}", ""]
        if value is None:
            lines.append(f"not measured: {results.get('skipped', {}).get(section, 'not applicable')}")
            continue
        lines += ["| figure | value | meaning |", "|---|---|---|"]
        for k, v in flatten(value, f"{section}/").items():
            if k.startswith("sparsity/freq_histogram"):
                continue
            lines.append(f"| {k.split('/', 1)[1]} | {_fmt(v)} | {_meaning(k).replace('|', '&#124;')} |")
        if section == "sparsity":
            for name in ("freq_histogram", "freq_histogram_effective"):
                kind = "effective" if "effective" in name else "novel"
                lines += ["", f"Firing frequency ({kind} codes):", "", _histogram(value[name])]
    if results.get("figures"):
        lines += ["", "## figures", ""] + [f"![{p.rsplit('/', 1)[-1]}]({p.rsplit('/', 1)[-1]})" for p in results["figures"]]
    return "\n".join(lines) + "\n"
