"""Evaluate one trained SAE: is it better, and is its sparsity real?

    run dir (config.yaml, sae.safetensors) -> same source, cache, split and LM as training
        -> held-out windows -> SAE -> reconstruction, sparsity, temporal, context pathway   (evaluate_fast: no LM)
        -> LM with the reconstruction spliced in -> CE loss recovered, KL                   (downstream)
        -> two-language windows -> LM -> SAE -> best "language B started" latent          (language switch probe)
        -> eval.json, eval.md, eval_heatmap_*.png, TensorBoard (scalars, hparams, figures) in the run dir
        -> with report=html: the feature browser in <run>/browse/ (``ctxsae.browse``)

Held-out windows are the DataModule's val split (the same windows for every run of a sweep);
metrics count the positions its ``mask_BT`` keeps, as training does. Activations are fed to the
SAE in its own units (``sae.act_scale``). Synthetic data has no LM: downstream and probe figures
are null there, and ground-truth figures (``ctxsae.metrics.synthetic``) are added instead.
``evaluate_fast`` is the cheap subset that training can run at the end of every run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ctxsae.data.debian_reference import DEBIAN_REFERENCE_ROOT, parallel_switch_texts
from ctxsae.data.text import DEFAULT_SWITCH_PAIRS, FORTUNES_ROOT, SwitchText, language_switch_windows, segment_switch_texts
from ctxsae.data.windows import token_texts
from ctxsae.errors import UserError
from ctxsae.metrics import synthetic
from ctxsae.metrics.downstream import ABLATIONS, CONDITIONS, SPLICE_ONLY, Downstream
from ctxsae.metrics.language import switch_probe, switch_windows, with_controls
from ctxsae.metrics.reconstruction import Reconstruction
from ctxsae.metrics.sparsity import Sparsity
from ctxsae.metrics.temporal import Temporal, ground_truth_regions
from ctxsae.models.base import SAE, load_sae
from ctxsae.report.markdown import flatten, to_markdown
from ctxsae.report.plots import activation_heatmap
from ctxsae.train.objective import Windows


@dataclass
class ProbeConfig:
    n_windows: int = 64  # stitched two-language windows (0: no probe)
    # fortunes: two entries stitched | debian_reference: a chapter continued in the other language at a block
    # boundary (parallel text) | segments: the label changes of a user's JSONL of labelled segments
    source: str = "fortunes"
    root: str = FORTUNES_ROOT  # the fortunes install the two-language texts come from
    book_root: str = DEBIAN_REFERENCE_ROOT  # the Debian Reference install (source=debian_reference)
    segments: str | None = None  # the JSONL path (source=segments): [{"text": ..., "label": ...}, ...] per line
    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_SWITCH_PAIRS))  # "a-b": a fortune in a, then one in b
    joiner: str = "\n\n"  # between the two fortunes (also in the same-language control windows)
    seed: int = 0  # which fortunes are stitched


@dataclass
class EvalConfig:
    run: str = "???"  # a run directory (config.yaml + sae.safetensors), or the sae.safetensors inside one
    device: str = "auto"  # auto (cuda if available) | cpu | cuda[:i]
    batch_windows: int = 8  # windows per SAE / LM forward pass
    max_windows: int = 0  # held-out windows evaluated (0: the whole val split)
    downstream: bool = True  # splice the reconstruction into the LM (text data only)
    dense_threshold: float = 0.1  # a latent firing at more than this share of positions is dense
    region_gap: int = 2  # silent positions a region may contain (regions: see ctxsae.metrics.temporal)
    region_min_len: int = 4  # shortest span that counts as a region
    heatmap_windows: int = 2  # held-out windows drawn as latent heatmaps (plus one probe window)
    heatmap_latents: int = 8  # latents per heatmap
    tensorboard: bool = True  # log figures, histograms and hparams under <run>/tb
    report: str = "none"  # none | html: also write the feature browser (ctxsae.browse) into <run>/browse/
    probe: ProbeConfig = field(default_factory=ProbeConfig)


# -- the held-out windows ------------------------------------------------------------------------


def val_batches(dm, cfg: EvalConfig, device: torch.device, unit: float) -> Iterator[Windows]:
    """The first ``max_windows`` held-out windows, ``batch_windows`` at a time, in the SAE's units."""
    ds = dm.dataset("val")
    n = len(ds) if cfg.max_windows <= 0 else min(cfg.max_windows, len(ds))
    for lo in range(0, n, cfg.batch_windows):
        b = ds.__getitems__(list(range(lo, min(lo + cfg.batch_windows, n))))
        b.x_BTD.mul_(unit)
        yield b.to(device)


def sae_unit(sae: SAE, dm) -> float:
    """Factor from the DataModule's normalisation to the SAE's (1 unless the SAE was trained on other data)."""
    return float(sae.act_scale) / dm.scale


class _Mean:
    """Position-weighted running mean of dicts of floats (``context_stats`` is per batch)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def update(self, figures: dict[str, float], weight: int) -> None:
        for k, v in figures.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
        self.n += weight

    def compute(self) -> dict[str, float] | None:
        return {k: v / self.n for k, v in self.sums.items()} if self.n else None


@torch.no_grad()
def held_out_pass(sae: SAE, dm, cfg: EvalConfig, on_batch: Callable[[Windows, Any], None] | None = None) -> tuple[dict, dict]:
    """The held-out figures, and the per-latent accumulators behind them (``extras``) for other readers.

    ``on_batch(windows, out)``: called with every batch and the SAE's output, so a caller that wants
    more per-latent figures (the feature browser) reads the same windows in the same pass.
    """
    device = next(sae.parameters()).device
    rec, spars = Reconstruction(), Sparsity(sae.d_sae)
    temporal, context = Temporal(sae.d_sae, cfg.region_gap, cfg.region_min_len), _Mean()
    for b in val_batches(dm, cfg, device, sae_unit(sae, dm)):
        out = sae(b.x_BTD, b.doc_start_BT)
        rec.update(b.x_BTD, out.reconstruction, b.mask_BT)
        spars.update(out, b.mask_BT)
        temporal.update(out, b.doc_start_BT, b.mask_BT)
        if hasattr(sae, "context_stats"):
            context.update(sae.context_stats(out), out.codes.shape[0] * out.codes.shape[1])
        if on_batch is not None:
            on_batch(b, out)
    results = {
        "reconstruction": rec.compute(),
        "sparsity": spars.compute(cfg.dense_threshold),
        "temporal": temporal.compute(),
        "context": context.compute(),
        "synthetic": _synthetic(sae, dm, cfg) if hasattr(dm.source, "ground_truth") else None,
    }
    fired = spars.fires_F[spars.fires_F > 0].double() / max(spars.n, 1)
    extras = {"mean_x_D": (torch.as_tensor(rec.sum_x) / max(rec.n, 1)).float(), "log10_freq": fired.log10(),
              "sparsity": spars, "temporal": temporal}
    return results, extras


def _synthetic(sae: SAE, dm, cfg: EvalConfig) -> dict:
    """Ground-truth figures on the same held-out windows, regenerated exactly (not from the float16 cache)."""
    val = dm.val_idx if cfg.max_windows <= 0 else dm.val_idx[: cfg.max_windows]
    data = dm.source.ground_truth(val)
    device = next(sae.parameters()).device
    figures = {k.replace("/", "_"): v for k, v in synthetic.evaluate(sae, data).items()}
    if bool(data.is_region_F.any()):
        out = sae(sae.normalize(data.x_NTD.to(device)), data.doc_start_NT.to(device))
        inside = data.acts_NTF[..., data.is_region_F] > 0
        match = synthetic.match_by_decoder(sae.W_dec, data)
        figures |= {f"gt_region_{k}": v for k, v in ground_truth_regions(out, data.doc_start_NT, inside, match).items()}
    return figures


def evaluate_fast(sae: SAE, datamodule, cfg: EvalConfig | None = None) -> dict:
    """Reconstruction, sparsity, temporal and context figures on the held-out windows; no LM needed.

    ``datamodule``: an ``ActivationDataModule`` (set up here if it is not yet). Seconds on a CPU for
    the default val split, so training can call it at the end of every run.
    """
    datamodule.setup("validate")
    return held_out_pass(sae, datamodule, cfg or EvalConfig())[0]


# -- with the LM ---------------------------------------------------------------------------------


@torch.no_grad()
def _downstream(sae: SAE, dm, cfg: EvalConfig, extractor, mean_x_D: torch.Tensor) -> dict:
    """CE recovered and KL; the zero / mean ablations are computed once per cache and evaluation set."""
    device = next(sae.parameters()).device
    mean_raw_D = sae.denormalize(mean_x_D.to(device))
    baseline_file = _ablation_file(dm, cfg, extractor, mean_raw_D)
    try:
        baseline = json.loads(baseline_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not computed yet, or damaged: (re)compute it below
        baseline = None
    acc = Downstream(SPLICE_ONLY if baseline else CONDITIONS)
    for b in val_batches(dm, cfg, device, 1.0):
        acc.update(extractor.lm, extractor.envoy, sae, b.tokens_BT.long(), b.doc_start_BT, b.mask_BT, mean_raw_D)
    if baseline is None:
        baseline_file.parent.mkdir(exist_ok=True)
        tmp = baseline_file.with_name(baseline_file.name + ".tmp")
        tmp.write_text(json.dumps(acc.sums(ABLATIONS)))
        tmp.replace(baseline_file)  # atomic: jobs of a sweep may evaluate at once
    return acc.compute(baseline)


def _ablation_file(dm, cfg: EvalConfig, extractor, mean_raw_D: torch.Tensor) -> Path:
    """Where the ablation sums for these windows live: in the activation cache, keyed by all they depend on
    (the cache already fixes LM, hook and windows; here: which held-out windows, the LM's dtype and device, the mean)."""
    weight = next(extractor.loaded.model.parameters())
    mean = np.round(mean_raw_D.double().cpu().numpy(), 4).tobytes()
    key = json.dumps([cfg.max_windows, str(weight.dtype), weight.device.type, dm.cfg.exclude_first])
    digest = hashlib.sha256(key.encode() + np.asarray(dm.val_idx, dtype=np.int64).tobytes() + mean).hexdigest()[:16]
    return Path(dm.cache.folder) / "downstream" / f"ablations_{digest}.json"


@torch.no_grad()
def _probe_codes(sae: SAE, extractor, tokens_NT: torch.Tensor, batch_windows: int):
    device = next(sae.parameters()).device
    codes, effective = [], []
    for ids in tokens_NT.split(batch_windows):
        x = sae.normalize(extractor(ids).to(device))
        doc_start = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        doc_start[:, 0] = True  # one document: the SAE sees language A before the switch
        out = sae(x, doc_start)
        codes.append(out.codes.cpu())
        effective.append(out.effective_codes.cpu())
    return torch.cat(codes), torch.cat(effective)


def probe_texts(p: ProbeConfig) -> tuple[list[SwitchText], str]:
    """The probe's switch texts from ``p.source``, and the joiner its control windows use."""
    n_per_pair = math.ceil(p.n_windows / len(p.pairs))
    if p.source == "fortunes":
        return language_switch_windows(p.root, p.pairs, n_per_pair, p.seed, p.joiner), p.joiner
    if p.source == "debian_reference":
        return parallel_switch_texts(p.pairs, n_per_pair, p.seed, p.book_root, p.joiner), p.joiner
    if p.source == "segments" and p.segments:
        return segment_switch_texts(p.segments), ""  # the user's segments meet without a joiner
    raise UserError(f"probe.source={p.source!r}: choose fortunes, debian_reference, or segments with probe.segments=<file.jsonl>")


def language_switch(sae: SAE, cfg: EvalConfig, extractor, n_ctx: int):
    texts, joiner = probe_texts(cfg.probe)
    sw = switch_windows(with_controls(texts, joiner), extractor.loaded.tokenizer, n_ctx)
    n_switch = int((~sw.control_N).sum())
    if n_switch < 4 or n_switch == len(sw.control_N):
        raise UserError(f"language-switch probe: only {n_switch} usable switch window(s): raise probe.n_windows or data.n_ctx")
    codes, effective = _probe_codes(sae, extractor, sw.tokens_NT, cfg.batch_windows)
    return switch_probe(codes, effective, sw), (sw, codes, effective)


# -- figures -------------------------------------------------------------------------------------


def _labels(tokenizer, ids) -> list[str] | None:
    if tokenizer is None or int(ids.min()) < 0:  # synthetic windows have no text (ids -1)
        return None
    return token_texts(tokenizer, [int(i) for i in ids])


def top_latents(effective_TF: torch.Tensor, valid_T: torch.Tensor, k: int, first: list[int] = ()) -> list[int]:
    activity = effective_TF[valid_T].abs().sum(0)
    activity[list(first)] = -1
    return list(first) + activity.topk(min(k - len(first), len(activity))).indices.tolist()


@torch.no_grad()
def _heatmaps(sae: SAE, dm, cfg: EvalConfig, tokenizer, probe_data, results: dict) -> dict[str, Figure]:
    figures = {}
    name = type(sae).__name__
    ds, device = dm.dataset("val"), next(sae.parameters()).device
    for w in range(min(cfg.heatmap_windows, len(ds))):
        b = ds[w]
        out = sae(b.x_BTD.mul_(sae_unit(sae, dm)).to(device), b.doc_start_BT.to(device))
        latents = top_latents(out.effective_codes[0].cpu(), b.mask_BT[0], cfg.heatmap_latents)
        starts = [int(t) for t in b.doc_start_BT[0].nonzero() if t > 0]
        figures[f"heatmap_val{w}"] = activation_heatmap(
            out.codes[0], out.effective_codes[0], latents, _labels(tokenizer, b.tokens_BT[0]),
            f"{name}: held-out window {w}, most active latents (green: document start)", marks=starts,
        )
    if probe_data is not None:
        sw, codes, effective = probe_data
        probe = results["language_switch"]
        switch_rows = (~sw.control_N).nonzero().flatten()
        held_out = switch_rows[(sw.source_N[switch_rows] // 2) % 2 == 1]
        n = int(held_out[0] if len(held_out) else switch_rows[0])  # a switch window the latent was not picked on
        pair = sw.pair_N[n].split("-")
        language = [probe["language_auroc_by_language"][x]["latent"] for x in pair]
        latents = top_latents(effective[n], sw.valid_NT[n], cfg.heatmap_latents,
                               first=list(dict.fromkeys([probe["latent"], *language])))
        T = int(sw.valid_NT[n].nonzero().max()) + 1
        figures["heatmap_switch"] = activation_heatmap(
            codes[n, :T], effective[n, :T], latents, _labels(tokenizer, sw.tokens_NT[n, :T]),
            f"{name}: language switch {sw.pair_N[n]} (green); first rows: best switch latent {probe['latent']}, "
            f"then the best {pair[0]} and {pair[1]} latents {language}", marks=[int(sw.switch_N[n])],
        )
    return figures


def evaluate(sae: SAE, dm, cfg: EvalConfig, extractor=None, n_ctx: int | None = None) -> tuple[dict, dict[str, Figure]]:
    """Every figure for one SAE. ``extractor``: the LM at the hook (``LMActivations.extractor``), None without an LM.

    Returns the results (nested dict, JSON-able) and the heatmap figures by name.
    """
    dm.setup("validate")
    seconds = {}
    t0 = time.perf_counter()
    results, extras = held_out_pass(sae, dm, cfg)
    seconds["held_out"] = time.perf_counter() - t0
    results |= {"downstream": None, "language_switch": None, "skipped": {}}
    if results["context"] is None:
        results["skipped"]["context"] = f"{type(sae).__name__} has no context pathway (no context_stats)"
    if results["synthetic"] is None:
        results["skipped"]["synthetic"] = "no ground truth: not synthetic data"
    if extractor is None:
        results["skipped"] |= dict.fromkeys(("downstream", "language_switch"), "no LM behind these activations")
    elif not cfg.downstream:
        results["skipped"]["downstream"] = "downstream=false"
    if extractor is not None and cfg.downstream:
        t0 = time.perf_counter()
        results["downstream"] = _downstream(sae, dm, cfg, extractor, extras["mean_x_D"])
        seconds["downstream"] = time.perf_counter() - t0
    probe_data = None
    if extractor is not None and cfg.probe.n_windows > 0:
        t0 = time.perf_counter()
        try:
            results["language_switch"], probe_data = language_switch(sae, cfg, extractor, n_ctx or dm.cache.n_ctx)
        except UserError as e:  # no fortunes here: the rest of the evaluation still stands
            results["skipped"]["language_switch"] = str(e)
        seconds["language_switch"] = time.perf_counter() - t0
    tokenizer = extractor.loaded.tokenizer if extractor is not None else None
    figures = _heatmaps(sae, dm, cfg, tokenizer, probe_data, results)
    results["seconds"] = seconds
    results["_log10_freq"] = extras["log10_freq"]  # for the TensorBoard histogram; not written to eval.json
    return results, figures


# -- one run directory ---------------------------------------------------------------------------


def resolve_run(run: str) -> tuple[Path, Path]:
    """(run directory, SAE file) from a run directory or a .safetensors file inside one."""
    path = Path(run).expanduser()
    run_dir, sae_file = (path, path / "sae.safetensors") if path.is_dir() else (path.parent, path)
    if not path.exists():
        raise UserError(f"run={run}: no such directory or file; pass a run directory of train.py or its sae.safetensors")
    if not sae_file.exists():
        raise UserError(f"no sae.safetensors in {run_dir}: the run has not finished; let it finish (or resume it) first")
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"no config.yaml next to {sae_file}: pass a run directory written by train.py")
    return run_dir, sae_file


def hparams_of(train_cfg: DictConfig, sae: SAE) -> dict:
    """What defines the run, for TensorBoard's HParams view: model, loss, optim, data, LM, length, seed."""
    keep = {k: train_cfg[k] for k in ("model", "loss", "optim", "lm", "data") if k in train_cfg}
    hp = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in keep.items()}
    hp["model"] = {"name": type(sae).__name__, **(hp.get("model") or {}), "d_in": sae.d_in, "d_sae": sae.d_sae}
    hp["max_tokens"] = OmegaConf.select(train_cfg, "trainer.max_tokens")
    hp["seed"] = OmegaConf.select(train_cfg, "seed")
    return hp


def scalars(results: dict) -> dict[str, float]:
    """The numeric figures of ``results`` as a flat dict (what TensorBoard and the tables show)."""
    not_figures = ("run", "hparams", "skipped", "figures", "seconds")
    sections = {k: v for k, v in results.items() if k not in not_figures and not k.startswith("_")}
    return {k: float(v) for k, v in flatten(sections).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def register_eval_config() -> None:
    """The eval schema in Hydra's ConfigStore, so a typo in an override fails at start-up."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


class OpenRun(NamedTuple):
    run_dir: Path
    sae_file: Path
    train_cfg: DictConfig
    sae: SAE  # on the chosen device, in eval mode
    dm: Any  # ActivationDataModule of the run's cache, set up (its val split: the held-out windows)
    extractor: Any  # the LM at the hook (``LMActivations.extractor``); None without an LM or when not asked for


def open_run(run: str, device: str = "auto", with_lm: bool = True) -> OpenRun:
    """Rebuild a run's SAE, source, cache, held-out split and (``with_lm``, text data only) LM from its config.yaml."""
    from ctxsae.extract.activations import LMActivations
    from ctxsae.train.datamodule import ActivationDataModule
    from ctxsae.train.run import build_source

    run_dir, sae_file = resolve_run(run)
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    torch_device = _device(device)
    try:
        sae, _ = load_sae(sae_file)
    except RuntimeError as e:  # load_state_dict: the SAE's code changed since the run saved it
        raise UserError(f"{sae_file} does not fit the current code of its SAE class ({str(e).splitlines()[-1].strip()}): "
                        "retrain the run, or evaluate it from the commit it was trained with") from e
    sae = sae.to(torch_device).eval()
    source = build_source(train_cfg)
    dm = ActivationDataModule(source, train_cfg.data, train_cfg.cache)
    dm.prepare_data()
    dm.setup("validate")
    extractor = None
    if isinstance(source, LMActivations) and with_lm:
        extractor = source.extractor
        extractor.loaded.model.to(torch_device)
        extractor.device = torch_device
    return OpenRun(run_dir, sae_file, train_cfg, sae, dm, extractor)


def evaluate_run(cfg: EvalConfig) -> dict:
    """Evaluate the run ``cfg.run``; write eval.json, eval.md, heatmaps and TensorBoard events into it."""
    t_start = time.perf_counter()
    if cfg.report not in ("none", "html"):
        raise UserError(f"report={cfg.report}: choose report=none or report=html (the feature browser)")
    opened = open_run(cfg.run, cfg.device, cfg.downstream or cfg.probe.n_windows > 0 or cfg.report == "html")
    run_dir, sae_file, train_cfg, sae, dm, extractor = opened
    results, figures = evaluate(sae, dm, cfg, extractor, train_cfg.data.n_ctx)
    log10_freq = results.pop("_log10_freq")
    hparams = hparams_of(train_cfg, sae)
    results = {
        "run": {
            "run_dir": str(run_dir), "sae_file": str(sae_file), "model": type(sae).__name__, "d_in": sae.d_in,
            "d_sae": sae.d_sae, "lm": OmegaConf.select(train_cfg, "lm.loader._target_") if extractor else None,
            "layer": train_cfg.lm.layer if extractor else None, "site": train_cfg.lm.site if extractor else None,
            "data": OmegaConf.select(train_cfg, "data.source._target_"), "val_windows": len(dm.val_idx),
            "evaluated_windows": len(dm.val_idx) if cfg.max_windows <= 0 else min(cfg.max_windows, len(dm.val_idx)),
        },
        **results,
        "hparams": hparams,
        "figures": [],
    }
    for name, fig in figures.items():
        path = run_dir / f"eval_{name}.png"
        _quiet(fig.savefig, path, dpi=110)
        results["figures"].append(str(path))
    results["seconds"]["total"] = time.perf_counter() - t_start
    (run_dir / "eval.json").write_text(json.dumps(_finite(results), indent=1, default=_json_default, allow_nan=False))
    (run_dir / "eval.md").write_text(to_markdown(results))
    if cfg.tensorboard:
        log_tensorboard(run_dir, results, figures, log10_freq)
    if cfg.report == "html":
        from ctxsae.browse import BrowseConfig, write_run_site

        results["browse"] = str(write_run_site(opened, BrowseConfig(eval=cfg)))
    return results


def log_tensorboard(run_dir: Path, results: dict, figures: dict[str, Figure], log10_freq: torch.Tensor) -> None:
    """Scalars under eval/..., with the hparams (HParams view), the frequency histogram and the heatmaps.

    Written to <run>/tb beside the training events, into files ending in ``.eval``: a re-evaluation
    replaces them, so a run never holds two evaluations.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    tb = run_dir / "tb"
    for old in tb.glob("events.out.tfevents.*.eval"):
        old.unlink()
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False,
                               filename_suffix=".eval")
    metrics = {f"eval/{k}": v for k, v in scalars(results).items() if math.isfinite(v)}
    logger.log_hyperparams(results["hparams"], metrics=metrics, step=0)
    if len(log10_freq):
        logger.experiment.add_histogram("eval/sparsity/log10_firing_frequency", log10_freq.numpy(), 0)
    for name, fig in figures.items():
        _quiet(logger.experiment.add_figure, f"eval/{name}", fig, 0, close=False)
    logger.finalize("success")


def _quiet(fn, *args, **kwargs):
    """Drawing CJK tokens with the default font only warns about missing glyphs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


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
