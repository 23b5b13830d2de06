"""The feature browser's data: what each latent does on the held-out windows, as plain values (see ``ctxsae.browse``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.data.windows import token_texts
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig
from ctxsae.eval.figures import top_latents
from ctxsae.eval.held_out import held_out_indices, held_out_pass
from ctxsae.eval.probe import ProbeCodes, language_switch
from ctxsae.eval.run import Evaluation
from ctxsae.extract.activations import get_attr, layout_of
from ctxsae.metrics.language import switch_auroc
from ctxsae.metrics.temporal import active_before, active_pattern, continuation_mask
from ctxsae.models.base import SAE, ContextualSAE, SAEOutput
from ctxsae.train.run_dir import OpenRun

# The final norm before the unembedding, by where a layout keeps its blocks (ctxsae.extract.activations.LAYOUTS).
FINAL_NORMS = {
    "model.layers": "model.norm",
    "transformer.h": "transformer.ln_f",
    "gpt_neox.layers": "gpt_neox.final_layer_norm",
}


@dataclass
class BrowseConfig:
    n_features: int = 50  # feature pages for the most active latents (sum of |effective code| over held-out positions)
    features: list[int] = field(default_factory=list)  # latents that get a page as well
    n_windows: int = 5  # top-activating held-out windows per feature page
    n_logits: int = 10  # promoted and suppressed tokens per feature page
    compare_windows: int = 4  # held-out windows on the compare page
    compare_features: int = 3  # most active latents per run and window on the compare page
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out windows, batch size, probe settings


@dataclass
class Window:
    index: int  # in the held-out split
    tokens: list[str] | None  # text of each position; None without text (synthetic data)
    kept: list[bool]  # positions that count in the metrics (the first is the attention sink)
    doc_starts: list[int]  # positions > 0 where a document starts


@dataclass
class CodeRow:
    latent: int
    window: int
    novel: list[float]  # codes [T]
    effective: list[float]  # effective codes [T]


@dataclass
class Attribution:
    window: int
    position: int
    value: float  # effective code there
    sources: list[tuple[int, float]]  # (position, contribution), summing to value


@dataclass
class FeatureStats:
    latent: int
    frequency: float  # share of kept positions where the novel code fires
    frequency_effective: float  # ... where the effective code is active
    run_length: float  # active positions per run of the effective code (nan: never active)
    flicker: float  # on -> off switches of the effective code per active position
    onset_share: float  # share of novel firings at the first position of an effective run
    switch_auroc: float | None  # language-switch probe; None without fortunes and an LM


@dataclass
class FeaturePage:
    stats: FeatureStats
    why: str  # why this latent has a page
    rows: list[CodeRow]  # its top windows, most active first
    histogram: dict  # edges [n + 1], novel [n], effective [n]: non-zero values over the held-out positions
    logits: dict | None  # {"promoted": [(token, logit)], "suppressed": [...]}; None without an LM
    attribution: Attribution | None  # contextual SAEs: a carried effective code in a top window, by source


@dataclass
class Site:
    name: str
    model: str
    d_in: int
    d_sae: int
    contextual: bool  # has ``attribute``: effective codes are carried from earlier positions
    summary: dict[str, float]  # fvu, l0, l0_effective, dead_fraction, n_tokens, windows
    features: list[FeatureStats]  # every latent that fires on the held-out windows
    pages: list[FeaturePage]
    windows: dict[int, Window]
    notes: list[str]  # what is missing and why


@dataclass
class Comparison:
    names: list[str]  # baseline first
    models: list[str]
    summaries: list[dict[str, float]]
    windows: dict[int, Window]
    rows: list[list[list[CodeRow]]]  # [window][run] -> that run's most active latents in the window


class PeaksAndOnsets:
    """The browser's accumulator in the held-out pass: onsets, activity and each latent's top windows, streamed."""

    def __init__(self, d_sae: int, n_top: int):
        self.n_top, self.seen = n_top, 0
        self.onsets_F = torch.zeros(d_sae, dtype=torch.long)
        self.activity_F = torch.zeros(d_sae, dtype=torch.float64)
        self.peak_WF = torch.zeros(0, d_sae)  # the n_top largest |effective code| per latent ...
        self.window_WF = torch.zeros(0, d_sae, dtype=torch.long)  # ... and the windows they are in

    def update(self, b: Windows, out: SAEOutput) -> None:
        a_BFT = active_pattern(out.effective_codes, b.mask_BT)
        z_BFT = a_BFT if out.codes is out.effective_codes else active_pattern(out.codes, b.mask_BT)
        start_BFT = a_BFT & ~active_before(a_BFT, continuation_mask(b.doc_start_BT, b.mask_BT))
        self.onsets_F += (z_BFT & start_BFT).sum(-1).sum(0).cpu()
        a_BTF = out.effective_codes.abs() * b.mask_BT[..., None]
        self.activity_F += a_BTF.sum((0, 1)).double().cpu()
        peak_BF = a_BTF.amax(1).cpu()
        B, F = peak_BF.shape
        peaks = torch.cat([self.peak_WF, peak_BF])
        windows = torch.cat([self.window_WF, torch.arange(self.seen, self.seen + B)[:, None].expand(B, F)])
        top = peaks.topk(min(self.n_top, len(peaks)), dim=0)
        self.peak_WF, self.window_WF = top.values, windows.gather(0, top.indices)
        self.seen += B

    def compute(self) -> dict[str, Tensor]:
        return {"onsets_F": self.onsets_F, "activity_F": self.activity_F, "peak_WF": self.peak_WF,
                "window_WF": self.window_WF}


def _window(index: int, b, n: int, tokenizer) -> Window:
    """Window ``n`` of batch ``b`` (held-out index ``index``)."""
    ids = b.tokens_BT[n].tolist()
    text = tokenizer is not None and min(ids) >= 0  # synthetic windows have no text (ids -1)
    starts = [int(t) for t in b.doc_start_BT[n].nonzero().flatten() if t > 0]
    return Window(index, token_texts(tokenizer, ids) if text else None, b.mask_BT[n].tolist(), starts)


def _round(values: Tensor) -> list[float]:
    return [round(v, 4) for v in values.tolist()]  # 4 decimals: the pages stay small


@torch.no_grad()
def logit_effects(model, W_dec_PD: Tensor, tokenizer, k: int) -> list[dict]:
    """Direct logit attribution of decoder rows: the tokens W_U (W_dec[i] * final norm weight) ranks highest and lowest.

    The usual approximation: later layers are skipped and the final norm is taken as its fixed
    per-channel weight (its division by the residual's size only rescales all logits of a row, so
    the ranking, which is all that is shown, does not depend on it, nor on the SAE's ``act_scale``).
    """
    norm_D = get_attr(model, FINAL_NORMS[layout_of(model)[0]]).weight
    W_U_VD = model.get_output_embeddings().weight
    logits_PV = (W_dec_PD.to(W_U_VD) * norm_D) @ W_U_VD.T
    out = []
    for row_V in logits_PV.float().cpu():
        up, down = row_V.topk(k), (-row_V).topk(k)
        out.append({"promoted": [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(*up)],
                    "suppressed": [(tokenizer.decode([int(i)]), -float(v)) for v, i in zip(*down)]})
    return out


def _histogram(novel: list[Tensor], effective: list[Tensor], bins: int = 24) -> dict:
    z, a = torch.cat(novel).numpy(), torch.cat(effective).numpy()
    both = np.concatenate([z, a])
    lo, hi = (min(0.0, both.min()), both.max()) if len(both) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    counts = {name: np.histogram(v, edges)[0].tolist() for name, v in (("novel", z), ("effective", a))}
    return {"edges": edges.tolist(), **counts}


def _switch_aurocs(probe: ProbeCodes | None, skipped: str | None, notes: list[str]) -> Tensor | None:
    """Switch AUROC per latent over all probe windows (in-sample for the probe's own pick); None without a probe."""
    if probe is None:
        notes.append(f"switch AUROC: blank, the probe was skipped ({skipped})" if skipped else
                     "switch AUROC: blank, no language-switch probe (it needs fortunes text and an LM)")
        return None
    sw = probe.windows
    return switch_auroc(probe.codes_NTF, sw.valid_NT, sw.switch_N, sw.control_N)["auroc"]


def _attribute(
    sae: SAE, out, n: int, i: int, z_T: Tensor, a_T: Tensor, kept_T: Tensor, window: int,
) -> tuple[Attribution, bool]:
    """Latent i's largest effective code in window n that context carried in (else its largest), by source.

    At an onset the effective code is its own novel code, which says nothing; a carried one shows
    which earlier positions produced it. The flag says whether anything was carried.
    """
    carried_T = (a_T != z_T) & kept_T
    t = int((a_T.abs() * (carried_T if carried_T.any() else kept_T)).argmax())
    return Attribution(window, t, float(a_T[t]), sae.attribute(out, n, t, i)), bool(carried_T.any())


def _feature_stats(i: int, spars, temporal, onsets_F: Tensor, auroc_F: Tensor | None) -> FeatureStats:
    """Latent i's row of the index, from the held-out pass's counts (nan where a ratio has nothing to count)."""
    def ratio(num: Tensor, den: Tensor) -> float:
        return num[i].item() / den[i].item() if den[i] else float("nan")

    eff, n = temporal.effective, max(spars.n.item(), 1)
    return FeatureStats(i, spars.fires_F[i].item() / n, spars.fires_eff_F[i].item() / n, ratio(eff.active, eff.starts),
                        ratio(eff.offs, eff.active), ratio(onsets_F, temporal.novel.active),
                        None if auroc_F is None else float(auroc_F[i]))


@torch.no_grad()
def _pages_pass(sae: SAE, dm, cfg: EvalConfig, latents: list[int], wanted: dict[int, list[int]], tokenizer):
    """The held-out windows again, reading only ``latents``: their code rows in the windows ``wanted``
    (window -> indices into ``latents``), their non-zero values, and attributions in those windows."""
    rows: dict[tuple[int, int], CodeRow] = {}
    attributions: dict[tuple[int, int], tuple[Attribution, bool]] = {}
    values: list[tuple[list[Tensor], list[Tensor]]] = [([], []) for _ in latents]
    windows: dict[int, Window] = {}
    device = next(sae.parameters()).device
    idx = torch.tensor(latents, dtype=torch.long, device=device)
    seen = 0
    for b in dm.held_out_batches(cfg.batch_windows, cfg.held_out_windows, device, dm.unit_of(sae)):
        out = sae(b.x_BTD, b.context_start_BT)
        z_BTP, a_BTP = out.codes[..., idx].cpu(), out.effective_codes[..., idx].cpu()
        b_cpu = b.to("cpu")
        for p in range(len(latents)):
            z, a = z_BTP[..., p][b_cpu.mask_BT], a_BTP[..., p][b_cpu.mask_BT]
            values[p][0].append(z[z != 0])
            values[p][1].append(a[a != 0])
        for n in range(len(z_BTP)):
            w = seen + n
            for p in wanted.get(w, []):
                windows.setdefault(w, _window(w, b_cpu, n, tokenizer))
                rows[p, w] = CodeRow(latents[p], w, _round(z_BTP[n, :, p]), _round(a_BTP[n, :, p]))
                if isinstance(sae, ContextualSAE):
                    attributions[p, w] = _attribute(
                        sae, out, n, latents[p], z_BTP[n, :, p], a_BTP[n, :, p], b_cpu.mask_BT[n], w)
        seen += len(z_BTP)
    return rows, attributions, values, windows


def browser_accumulators(sae: SAE, cfg: BrowseConfig) -> dict[str, PeaksAndOnsets]:
    """What the browser adds to the held-out pass."""
    return {"peaks": PeaksAndOnsets(sae.d_sae, cfg.n_windows)}


def check_features(sae: SAE, cfg: BrowseConfig) -> None:
    bad = [i for i in cfg.features if not 0 <= i < sae.d_sae]
    if bad:
        raise UserError(f"feature(s) {bad} out of range: this SAE has latents 0..{sae.d_sae - 1}")


def browse_pass(sae: SAE, dm, cfg: BrowseConfig, extractor=None, n_ctx: int | None = None) -> Evaluation:
    """Pass 1 and the probe for the browser alone: the held-out pass with its accumulators, no LM passes."""
    dm.setup("validate")
    accumulators = held_out_pass(sae, dm, cfg.eval, browser_accumulators(sae, cfg))
    results, probe = {"language_switch": None, "skipped": {}}, None
    if extractor is not None and cfg.eval.probe.n_windows > 0:
        try:
            results["language_switch"], probe = language_switch(sae, cfg.eval, extractor, n_ctx or dm.cache.n_ctx)
        except UserError as e:
            results["skipped"]["language_switch"] = str(e)
    return Evaluation(results, {}, accumulators, probe)


@torch.no_grad()
def collect_site(sae: SAE, dm, cfg: BrowseConfig, extractor=None, n_ctx: int | None = None, name: str = "",
                 evaluation: Evaluation | None = None) -> Site:
    """Everything the browser shows for one SAE on the DataModule's held-out windows (see the module docstring).

    ``evaluation``: the evaluation of this SAE whose held-out pass carried ``browser_accumulators``
    (``evaluate_and_browse``); without it, pass 1 and the probe run here (``browse_pass``).
    """
    check_features(sae, cfg)
    if evaluation is None:
        evaluation = browse_pass(sae, dm, cfg, extractor, n_ctx)
    ev, notes = cfg.eval, []
    tokenizer = extractor.loaded.tokenizer if extractor is not None else None
    peaks, spars, temporal = (evaluation.accumulators[k] for k in ("peaks", "sparsity", "temporal"))
    probe_latent = evaluation.results["language_switch"]["latent"] if evaluation.probe is not None else None
    auroc_F = _switch_aurocs(evaluation.probe, evaluation.results["skipped"].get("language_switch"), notes)

    named = {i: "named on the command line" for i in cfg.features}
    if probe_latent is not None:
        named.setdefault(probe_latent, "the language-switch probe's best latent")
    by_activity = peaks.activity_F.argsort(descending=True)[: cfg.n_features + len(named)].tolist()
    most_active = [i for i in by_activity if i not in named and peaks.activity_F[i] > 0][: cfg.n_features]
    why = named | {i: f"one of the {cfg.n_features} most active latents" for i in most_active}
    latents = list(why)  # a named latent may never fire: it still gets a page, with empty figures
    ranked = {i: peaks.window_WF[peaks.peak_WF[:, i] > 0, i].tolist() for i in latents}  # top windows, best first
    wanted: dict[int, list[int]] = {}
    for p, i in enumerate(latents):
        for w in ranked[i]:
            wanted.setdefault(w, []).append(p)
    rows, attributions, values, windows = _pages_pass(sae, dm, ev, latents, wanted, tokenizer)

    logits: list[dict | None] = [None] * len(latents)
    if extractor is not None:
        logits = logit_effects(extractor.loaded.model, sae.W_dec[latents], tokenizer, cfg.n_logits)
    else:
        notes.append("logit effect: skipped, no LM behind these activations")
    if not isinstance(sae, ContextualSAE):
        notes.append(f"attribution: {type(sae).__name__} is per-token, every effective code is its own novel code")
    fired = (spars.fires_F + spars.fires_eff_F).cpu().nonzero().flatten().tolist()
    stats = {i: _feature_stats(i, spars, temporal, peaks.onsets_F, auroc_F) for i in sorted({*fired, *latents})}
    pages = []
    for p, i in enumerate(latents):
        candidates = [attributions[p, w] for w in ranked[i] if (p, w) in attributions]
        # the best-ranked window where context carried something in, else the top window
        attribution = next((a for a, carried in candidates if carried), candidates[0][0] if candidates else None)
        shown = [rows[p, w] for w in ranked[i]]
        pages.append(FeaturePage(stats[i], why[i], shown, _histogram(*values[p]), logits[p], attribution))
    summary = _summary(evaluation.accumulators, dm, ev)
    return Site(name, type(sae).__name__, sae.d_in, sae.d_sae, isinstance(sae, ContextualSAE), summary,
                list(stats.values()), pages, windows, notes)


@torch.no_grad()
def compare_runs(
    saes: list[SAE], summaries: list[dict], names: list[str], dm, cfg: BrowseConfig, tokenizer=None,
) -> Comparison:
    """The same held-out windows (spread over the split) through each SAE: its most active latents in each."""
    ds = dm.dataset("val")
    picks = sorted({int(w) for w in np.linspace(0, len(ds) - 1, min(cfg.compare_windows, len(ds))).round()})
    windows = {w: _window(w, ds.__getitems__([w]), 0, tokenizer) for w in picks}
    rows: list[list[list[CodeRow]]] = [[] for _ in picks]
    for sae in saes:
        device = next(sae.parameters()).device
        b = ds.__getitems__(picks)
        out = sae(b.x_BTD.mul_(dm.unit_of(sae)).to(device), b.context_start_BT.to(device))
        z_NTF, a_NTF = out.codes.cpu(), out.effective_codes.cpu()
        for n, w in enumerate(picks):
            latents = top_latents(a_NTF[n], b.mask_BT[n], cfg.compare_features)
            rows[n].append([CodeRow(i, w, _round(z_NTF[n, :, i]), _round(a_NTF[n, :, i])) for i in latents])
    return Comparison(names, [type(s).__name__ for s in saes], summaries, windows, rows)


def check_same_windows(a: OpenRun, b: OpenRun) -> None:
    """Comparing runs only means something on the same held-out windows: the same cache and split."""
    if a.dm.cache.folder != b.dm.cache.folder or not np.array_equal(a.dm.val_idx, b.dm.val_idx):
        raise UserError(f"{a.run_dir} and {b.run_dir} were trained on different activation caches or held-out "
                        f"splits ({a.dm.cache.folder} vs {b.dm.cache.folder}): compare runs of the same data, LM "
                        "and data.seed")


def _summary(accumulators: dict, dm, cfg: EvalConfig) -> dict[str, float]:
    sparsity = accumulators["sparsity"].compute()
    summary = {k: sparsity[k] for k in ("l0", "l0_effective", "dead_fraction", "n_tokens")}
    return summary | {"fvu": accumulators["reconstruction"].compute()["fvu"], "windows": len(held_out_indices(dm, cfg))}


def collect_summary(sae: SAE, dm, cfg: EvalConfig) -> dict[str, float]:
    """The figures of ``Site.summary`` alone (for the baseline of a comparison)."""
    return _summary(held_out_pass(sae, dm, cfg), dm, cfg)
