"""Performance harness: every figure is a ratio of two things timed side by side in one process.

The machine may be shared and loaded, so absolute tokens/s mean little; a ratio of two paths
timed in alternation under the same load still does. Each ``bench_*`` function returns one
entry ``{"figure", "ratio", "target", "met", "detail"}`` (or ``"skipped": reason``).

Timing: ``warmup`` untimed calls, then the median of ``repeats`` timed calls. When two paths are
compared, their repeats alternate (A, B, A, B, ...) so a load spike hits both. ``python -m ctxsae.bench``
keeps freed host memory as the entry points do (``ctxsae.host_memory``; the report's
``machine.freed_memory_kept`` says whether it took effect).

A *training step* is what SAEModule does per batch, without Lightning: forward, loss
(``compute_loss``), backward, decoder-gradient projection, Adam step, decoder renormalisation.

FLOP count of a TopK training step at N tokens (used by the roofline figure):
    encoder  x @ W_enc                2 N d_in d_sae  forward (dense: the selection needs every pre-activation)
             grad wrt W_enc            2 N k d_in      backward, from the k selected entries per row
                                                       (``models.sparse_encoder``; the input needs none)
    decoder  embedding_bag of k rows   2 N k d_in      forward, 4 N k d_in backward  (~6 N k d_in)
Elementwise work (ReLU, TopK selection, Adam, the loss) is not counted: it is memory-bound and
small next to the encoder at d_sae >> k. The reference is a dense [N, d_in] @ [d_in, d_sae]
matmul (2 N d_in d_sae FLOPs) timed in the same run. With the sparse backward the step does
about half the FLOPs it did before, so the same figure now asks for a faster step.

Device: every figure that times a training step runs on ``--device`` (default: cuda when
available); on a GPU each timed call is bracketed by ``torch.cuda.synchronize()``, so the time is
the kernels', not the launch queue's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ctxsae.cache.dataset import Windows
from ctxsae.cache.store import CacheConfig, open_or_build
from ctxsae.data.source import ActivationChunk
from ctxsae.host_memory import keep_freed_memory
from ctxsae.models import build_sae
from ctxsae.models.base import SAE, window_starts
from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.train.module import adam
from ctxsae.train.objective import LossConfig, compute_loss

#: Each contextual SAE as it starts (recurrent and attention closed: no retention, no carry) and, where a
#: closed pathway costs less, with it open as training opens it: both states are timed against the target.
CONTEXTUAL = {
    "recurrent": ("ctxsae.models.recurrent.RecurrentSAE", {}),
    "recurrent, retention open": ("ctxsae.models.recurrent.RecurrentSAE", {"retention_init": 0.5}),
    "attention": ("ctxsae.models.attention.AttentionSAE", {}),
    "attention, carry open": ("ctxsae.models.attention.AttentionSAE", {"carry_init": 0.1}),
    "tfa": ("ctxsae.models.tfa.TFASAE", {}),
    "region": ("ctxsae.models.region.RegionSAE", {}),
    "document mean": ("ctxsae.models.document_mean.DocumentMeanSAE", {}),
}
#: Step time over TopK's that each contextual SAE should stay within (issue 10; the region and document-mean SAEs came later: no target).
CONTEXTUAL_TARGETS = {"recurrent": 1.5, "attention": 2.0, "tfa": 3.0}
LOAD_NOTE = (
    "The machine is shared and may be heavily loaded: absolute times are not meaningful; "
    "ratios are measured side by side (alternating repeats) in one process."
)


# -- timing and machine ---------------------------------------------------------------------------


def median_time(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return float(np.median([_time_once(fn) for _ in range(max(1, repeats))]))


def paired_times(fa: Callable[[], object], fb: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fa`` and ``fb``, their repeats interleaved so both see the same load."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(max(1, repeats)):
        ta.append(_time_once(fa))
        tb.append(_time_once(fb))
    return float(np.median(ta)), float(np.median(tb))


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object]) -> float:
    _synchronize()
    t0 = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - t0


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "note": LOAD_NOTE,
    }


def entry(figure: str, ratio: float, target: str, met: bool | None, **detail) -> dict:
    """One figure; ``met`` None where nothing has a target."""
    return {"figure": figure, "ratio": float(ratio), "target": target, "met": None if met is None else bool(met), "detail": detail}


def skipped(figure: str, reason: str) -> dict:
    return {"figure": figure, "ratio": None, "target": None, "met": None, "skipped": reason, "detail": {}}


# -- the training step -----------------------------------------------------------------------------


def batch_of(d_in: int, batch_tokens: int, n_ctx: int, seed: int = 0, device: str = "cpu") -> Windows:
    """Random normalised windows (E|x|^2 = d_in), a document start at t = 0, the sink masked, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    B = max(1, batch_tokens // n_ctx)
    x = torch.randn(B, n_ctx, d_in, generator=g)
    mask = torch.ones(B, n_ctx, dtype=torch.bool)
    mask[:, 0] = False
    return Windows(x, torch.full((B, n_ctx), -1), window_starts(B, n_ctx), mask).to(device)


def train_step_fn(sae: SAE, batch: Windows, lr: float = 1e-4, loss: LossConfig | None = None) -> Callable[[], None]:
    """One SAEModule-equivalent training step on ``batch`` (no Lightning overhead), clipped as the trainer clips.

    The SAE moves to the batch's device; on a GPU the forward pass runs under bf16 autocast, as
    ``trainer.precision=auto`` trains there (``bf16-mixed``).
    """
    device = batch.x_BTD.device
    sae.to(device)
    opt = adam(sae.parameters(), lr)
    cfg = loss or LossConfig()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _, _ = compute_loss(sae, batch, cfg, 0)
        loss.backward()
        if sae.unit_norm_decoder:
            sae.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)  # trainer.gradient_clip_val
        opt.step()
        if sae.unit_norm_decoder:
            sae.normalize_decoder()

    return step


def topk_flops(n_tokens: int, d_in: int, d_sae: int, k: int) -> float:
    return 2.0 * n_tokens * d_in * d_sae + 8.0 * n_tokens * k * d_in


# -- a fast fake activation source for the cache figures ------------------------------------------


class RandomSource:
    """ActivationSource of seeded Gaussian windows: cheap to generate, so the cache figures time the cache."""

    def __init__(self, d_in: int, n_ctx: int, n_windows: int, seed: int = 0):
        self.d_in, self.n_ctx, self._n, self.seed = d_in, n_ctx, n_windows, seed

    def fingerprint(self) -> dict:
        return {"source": "ctxsae.bench.RandomSource", "d_in": self.d_in, "n_ctx": self.n_ctx, "n": self._n, "seed": self.seed}

    def n_windows(self) -> int:
        return self._n

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        for lo in range(start, self._n, chunk_windows):
            hi = min(lo + chunk_windows, self._n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + lo)
            x = torch.randn(hi - lo, self.n_ctx, self.d_in, generator=g)
            yield ActivationChunk(x, torch.full((hi - lo, self.n_ctx), -1, dtype=torch.int32), window_starts(hi - lo, self.n_ctx))


def datamodule(source: RandomSource, root: str, batch_windows: int):
    from ctxsae.train.datamodule import ActivationDataModule, DataConfig

    data = DataConfig(n_ctx=source.n_ctx, draw_windows=0, batch_windows=batch_windows, val_fraction=0.05)
    dm = ActivationDataModule(source, data, CacheConfig(root=root, verify=False))
    dm.setup("fit")
    return dm


# -- 1. extraction ---------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class TokenBatches:
    """ActivationSource over fixed token windows, extracted with our Extractor (as LMActivations does)."""

    def __init__(self, extractor, tokens_NT: torch.Tensor, batch_windows: int, tag: str):
        self.extractor, self.tokens, self.batch_windows, self.tag = extractor, tokens_NT, batch_windows, tag
        self.d_in, self.n_ctx = extractor.d_model, tokens_NT.shape[1]

    def fingerprint(self) -> dict:
        return {"source": "ctxsae.bench.TokenBatches", "tag": self.tag}

    def n_windows(self) -> int:
        return len(self.tokens)

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        step = self.batch_windows
        for lo in range(start, len(self.tokens), chunk_windows):
            hi = min(lo + chunk_windows, len(self.tokens))
            x = torch.cat([self.extractor(self.tokens[i : min(i + step, hi)]) for i in range(lo, hi, step)])
            yield ActivationChunk(x, self.tokens[lo:hi].int(), window_starts(hi - lo, self.n_ctx))


def bench_extraction(loaded, layer: int, n_windows: int, batch_windows: int, n_ctx: int, warmup: int, repeats: int) -> dict:
    """Our path (nnsight Extractor stopped after the hook + cache write) vs a raw HF forward stopped by a hook."""
    from ctxsae.extract.activations import Extractor, get_attr, first, layout_of

    model = loaded.model
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (n_windows, n_ctx), generator=torch.Generator().manual_seed(0))
    extractor = Extractor(loaded, layer, "resid_post")
    block = get_attr(model, layout_of(model)[0])[layer]
    tmp = tempfile.mkdtemp(prefix="ctxsae-bench-extract-")
    runs = iter(range(1_000_000))

    def ours() -> None:  # a fresh fingerprint each call: open_or_build extracts and writes every time
        source = TokenBatches(extractor, tokens, batch_windows, tag=str(next(runs)))
        open_or_build(source, CacheConfig(root=tmp, verify=False, shard_windows=max(batch_windows, 64)), progress=False)

    saved: list[torch.Tensor] = []

    def hook(module, args, output):
        saved.append(first(output).float().cpu())
        raise _Stop

    def raw() -> None:
        saved.clear()
        handle = block.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                for i in range(0, n_windows, batch_windows):
                    try:
                        model(tokens[i : i + batch_windows])
                    except _Stop:
                        pass
        finally:
            handle.remove()

    try:
        t_ours, t_raw = paired_times(ours, raw, warmup, repeats)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    n_tok = n_windows * n_ctx
    ratio = t_raw / t_ours  # = ours tokens/s over raw tokens/s
    return entry(
        "extraction: ours (nnsight + cache write) / raw HF hook, tokens/s", ratio, ">= 0.95", ratio >= 0.95,
        lm=loaded.name, layer=layer, tokens=n_tok, batch_windows=batch_windows, n_ctx=n_ctx,
        ours_tokens_per_s=n_tok / t_ours, raw_tokens_per_s=n_tok / t_raw,
    )


def bench_multilayer(loaded, layers: list[int], n_windows: int, batch_windows: int, n_ctx: int, warmup: int, repeats: int) -> dict:
    """One LM pass saving the hooks at several layers vs one pass saving only the deepest (both stopped there)."""
    from ctxsae.extract.activations import Extractor

    tokens = torch.randint(0, loaded.model.config.vocab_size, (n_windows, n_ctx), generator=torch.Generator().manual_seed(0))
    joint, deepest = Extractor(loaded, layers, "resid_post"), Extractor(loaded, max(layers), "resid_post")

    def over_batches(extract: Callable[[torch.Tensor], object]) -> Callable[[], None]:
        return lambda: [extract(tokens[i : i + batch_windows]) for i in range(0, n_windows, batch_windows)]

    t_joint, t_deepest = paired_times(over_batches(joint.at_layers), over_batches(deepest), warmup, repeats)
    ratio = t_joint / t_deepest
    return entry(
        f"multi-layer extraction: layers {layers} in one pass / the deepest alone, time", ratio, "<= 1.3", ratio <= 1.3,
        lm=loaded.name, layers=layers, tokens=n_windows * n_ctx, batch_windows=batch_windows, n_ctx=n_ctx,
    )


# -- 2. cache read vs training consumption -------------------------------------------------------------


def bench_cache(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int) -> dict:
    batch_windows = max(1, batch_tokens // n_ctx)
    n_batches = max(4, repeats)
    source = RandomSource(d_in, n_ctx, n_windows=int(batch_windows * n_batches * 1.2) + 2)
    with tempfile.TemporaryDirectory(prefix="ctxsae-bench-cache-") as root:
        dm = datamodule(source, root, batch_windows)
        it = iter(dm.train_dataloader())
        batch = next(it)  # warm-up read: page cache filled, as in the steady state of an epoch
        sae = TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k))
        step = train_step_fn(sae, batch)

        def read() -> None:
            nonlocal it
            try:
                next(it)
            except StopIteration:
                it = iter(dm.train_dataloader())
                next(it)

        t_read, t_step = paired_times(read, step, warmup, repeats)
    ratio = t_step / t_read  # batches/s the loader supplies over batches/s a TopK step consumes
    tok = batch_windows * n_ctx
    return entry(
        "cache: DataModule read / TopK step consumption, tokens/s", ratio, ">= 10", ratio >= 10,
        read_tokens_per_s=tok / t_read, step_tokens_per_s=tok / t_step, batch_tokens=tok, dtype="float16",
    )


# -- 3. SAELens --------------------------------------------------------------------------------------------


def saelens_step_fn(sae, x_ND: torch.Tensor, lr: float = 1e-4) -> Callable[[], None]:
    """One step of SAELens's own training loop (``SAETrainer._train_step``) on ``x_ND``, minus logging."""
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    coefficients = {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}
    since_fired_F = torch.zeros(sae.cfg.d_sae, device=x_ND.device)
    no_dead_F = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x_ND.device)

    def step() -> None:
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x_ND, coefficients=coefficients, dead_neuron_mask=no_dead_F, n_training_steps=0, is_logging_step=False,
        ))
        with torch.no_grad():
            since_fired_F.add_(1)[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def bench_saelens(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int,
                  device: str = "cpu") -> dict:
    """Our TopK (and ReLU + L1) training step against SAELens's on the same activations, width, k and Adam."""
    figure = "saelens: ours / SAELens TopK training step, tokens/s"
    try:
        import sae_lens as sl
    except ImportError:
        return skipped(figure, "skipped: pip install sae-lens (or pip install -e .[bench])")
    from ctxsae.models.relu import ReLUConfig, ReLUSAE

    batch = batch_of(d_in, batch_tokens, n_ctx, device=device)
    x_ND, N = batch.x_BTD.flatten(0, 1), batch.x_BTD.shape[0] * n_ctx
    pairs = {
        "topk": (train_step_fn(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), batch),
                 saelens_step_fn(sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device)), x_ND)),
        "relu_l1": (train_step_fn(ReLUSAE(ReLUConfig(d_in=d_in, d_sae=d_sae)), batch, loss=LossConfig(sparsity=5.0)),
                    saelens_step_fn(sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0,
                                                                                        device=device)), x_ND)),
    }
    detail = {"sae_lens": sl.__version__, "tokens": N}
    for name, (ours, theirs) in pairs.items():
        t_ours, t_theirs = paired_times(ours, theirs, warmup, repeats)
        detail[name] = {"ratio": t_theirs / t_ours, "ours_tokens_per_s": N / t_ours, "saelens_tokens_per_s": N / t_theirs}
    ratio, target = detail["topk"]["ratio"], 3.5 if device == "cpu" else 2.0  # issue 10's CPU target; the first one elsewhere
    return entry(figure, ratio, f">= {target}", ratio >= target, **detail)


def sparsify_step_fn(d_in: int, d_sae: int, k: int, x_ND: torch.Tensor, lr: float = 1e-4) -> Callable[[], None]:
    """One step of sparsify's trainer (``Trainer.fit``) on ``x_ND``, minus logging and dead-latent bookkeeping.

    Its loss (fvu + auxk_alpha auxk + multi_topk_fvu / 8), its decoder-gradient projection, and its
    forward pass under its own bf16 autocast on a GPU (its default); Adam instead of its default
    signum, so that both sides take the same optimizer step.
    """
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=x_ND.device)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    no_dead_F = torch.zeros(d_sae, dtype=torch.bool, device=x_ND.device)

    def step() -> None:
        out = sae(x_ND, dead_mask=no_dead_F)
        (out.fvu + out.auxk_loss / 32 + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    return step


def bench_sparsify(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int,
                   device: str = "cpu") -> dict:
    """Our TopK training step against sparsify's (EleutherAI) on the same activations, width, k and Adam."""
    figure = "sparsify: ours / sparsify TopK training step, tokens/s"
    try:
        import sparsify
    except ImportError as e:
        return skipped(figure, f"skipped: sparsify not importable ({e}); pip install eai-sparsify (or pip install -e .[bench])")
    batch = batch_of(d_in, batch_tokens, n_ctx, device=device)
    x_ND, N = batch.x_BTD.flatten(0, 1), batch.x_BTD.shape[0] * n_ctx
    t_ours, t_theirs = paired_times(train_step_fn(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), batch), sparsify_step_fn(d_in, d_sae, k, x_ND),
                                    warmup, repeats)
    ratio = t_theirs / t_ours
    return entry(figure, ratio, ">= 2.0", ratio >= 2.0, sparsify=getattr(sparsify, "__version__", "?"), tokens=N, device=device,
                 ours_tokens_per_s=N / t_ours, sparsify_tokens_per_s=N / t_theirs)


#: The shapes of issue 10 (d_in, d_sae, k, tokens per step): a small, a mid and a large SAE.
ISSUE_SHAPES = ((576, 9216, 32, 8192), (2048, 65536, 64, 8192), (4096, 131072, 64, 4096))


def bench_shapes(shapes, n_ctx: int, warmup: int, repeats: int, device: str) -> dict:
    """Our default-config TopK step against both anchors at each shape; the worst ours/sparsify ratio is the figure."""
    rows = {}
    for d_in, d_sae, k, tokens in shapes:
        sizes = dict(d_in=d_in, d_sae=d_sae, k=k, batch_tokens=tokens, n_ctx=n_ctx, warmup=warmup, repeats=repeats, device=device)
        rows[f"{d_in}x{d_sae} k{k} {tokens} tok"] = {"sparsify": bench_sparsify(**sizes), "saelens": bench_saelens(**sizes)}
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    ratios = [r["sparsify"]["ratio"] for r in rows.values() if r["sparsify"]["ratio"] is not None]
    if not ratios:
        return skipped("shapes: ours / sparsify TopK step at each shape (worst)", "skipped: sparsify not installed") | {"detail": rows}
    worst = min(ratios)
    return entry("shapes: ours / sparsify TopK step at each shape (worst)", worst, ">= 2.0", worst >= 2.0, device=device, **rows)


# -- 4. roofline -----------------------------------------------------------------------------------------------


def bench_roofline(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int,
                   device: str = "cpu") -> dict:
    batch = batch_of(d_in, batch_tokens, n_ctx, device=device)
    N = batch.x_BTD.shape[0] * n_ctx
    step = train_step_fn(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), batch)
    # The reference in the precision the step's encoder runs in (bf16 under autocast on a GPU).
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a, w = torch.randn(N, d_in, device=device, dtype=dtype), torch.randn(d_in, d_sae, device=device, dtype=dtype)
    t_step, t_mm = paired_times(step, lambda: a @ w, warmup, repeats)
    achieved, dense = topk_flops(N, d_in, d_sae, k) / t_step, 2.0 * N * d_in * d_sae / t_mm
    ratio = achieved / dense
    return entry(
        "roofline: TopK step FLOP/s / dense matmul FLOP/s", ratio, ">= 0.50", ratio >= 0.5,
        flop_count="2*N*d_in*d_sae + 8*N*k*d_in", tokens=N, device=device, step_gflops=achieved / 1e9, matmul_gflops=dense / 1e9,
    )


# -- 5. contextual overhead --------------------------------------------------------------------------------------


def bench_contextual(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int,
                     device: str = "cpu") -> dict:
    batch = batch_of(d_in, batch_tokens, n_ctx, device=device)
    per_model = {}
    for name, (path, fields) in CONTEXTUAL.items():
        ctx_step = train_step_fn(build_sae({"_target_": path, "d_in": d_in, "d_sae": d_sae, "k": k, **fields}), batch)
        topk_step = train_step_fn(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), batch)
        t_topk, t_ctx = paired_times(topk_step, ctx_step, warmup, repeats)
        cost, target = t_ctx / t_topk, CONTEXTUAL_TARGETS.get(name.split(",")[0])
        per_model[name] = {"cost": cost, "target": target, "met": None if target is None else cost <= target,
                           "tokens_per_s": batch.x_BTD.shape[0] * n_ctx / t_ctx, "topk_tokens_per_s": batch.x_BTD.shape[0] * n_ctx / t_topk}
    worst = max(m["cost"] / m["target"] for m in per_model.values() if m["target"] is not None)
    figure = "contextual: step time / TopK step time over its target (worst of recurrent, attention, tfa, closed and open; region, document mean: no target)"
    return entry(figure, worst, "<= 1.0", worst <= 1.0, **per_model)


def bench_trained(runs: list[str], baseline: str, warmup: int, repeats: int, device: str = "cpu") -> dict:
    """Trained runs' training steps against a trained baseline's (a TopK run of the same cell), on each run's data.

    The contextual figure times its SAEs as they start (closed) and in one made-up open state
    (every latent holding, every carry open); what a step costs depends on how much context the
    training opened, so this times the state training reached: each run's saved SAE and the
    baseline's, under their own loss configs, on the same batch of the run's held-out windows
    (its ``data.batch_windows``, in each SAE's units), their repeats alternating.
    """
    from hydra.utils import instantiate

    from ctxsae.errors import UserError
    from ctxsae.train.run_dir import open_run

    def trainable(run):
        return run.sae.to(device).train(), instantiate(run.train_cfg.loss), float(run.train_cfg.optim.lr)

    base = open_run(baseline, device, with_lm=False)
    base_sae, base_loss, base_lr = trainable(base)
    per_run = {}
    for path in runs:
        run = open_run(path, device, with_lm=False)
        if run.sae.cfg.d_in != base_sae.cfg.d_in:
            raise UserError(f"{path} has d_in {run.sae.cfg.d_in}, the baseline {baseline} {base_sae.cfg.d_in}: "
                            "pass a --baseline trained on the same activations")
        sae, loss, lr = trainable(run)
        batch_windows = run.train_cfg.data.batch_windows
        windows = next(run.dm.held_out_batches(batch_windows, batch_windows, device))
        batch, base_batch = (windows._replace(x_BTD=windows.x_BTD * run.dm.unit_of(s)) for s in (sae, base_sae))
        with torch.no_grad():  # the state that is timed: before the timed steps move it
            out = sae(batch.x_BTD, batch.context_start_BT)
        l0_BT, l0_effective_BT = ((c != 0).sum(-1)[batch.mask_BT].float() for c in (out.codes, out.effective_codes))
        t_base, t_run = paired_times(train_step_fn(base_sae, base_batch, base_lr, base_loss),
                                     train_step_fn(sae, batch, lr, loss), warmup, repeats)
        target = CONTEXTUAL_TARGETS.get(sae.architecture)
        per_run[path] = {"architecture": sae.architecture, "cost": t_run / t_base, "target": target,
                         "met": None if target is None else t_run / t_base <= target,
                         "l0": l0_BT.mean().item(), "l0_effective": l0_effective_BT.mean().item(),
                         "tokens": batch.x_BTD.shape[0] * batch.x_BTD.shape[1]}
    with_target = [m["cost"] / m["target"] for m in per_run.values() if m["target"] is not None]
    if not with_target:  # (region, document mean, baselines): their largest cost, against nothing
        figure = f"trained: step time / the step time of {baseline} (the largest; no run has a target)"
        return entry(figure, max(m["cost"] for m in per_run.values()), "none", None, baseline=baseline, **per_run)
    figure = f"trained: step time / the step time of {baseline} (worst of the runs with a target, over it)"
    return entry(figure, max(with_target), "<= 1.0", max(with_target) <= 1.0, baseline=baseline, **per_run)


def bench_end_to_end(d_in: int, d_sae: int, k: int, batch_tokens: int, n_ctx: int, warmup: int, repeats: int,
                     device: str = "cpu") -> dict:
    """What train.py does per batch (cache reads, host-to-device copies, Lightning, logging) against the bare step.

    The Lightning side runs ``SAEModule`` on a cache of random windows with the trainer settings
    ``train.py`` uses (its precision resolution, clipping, log_every_n_steps 10, a CSV logger); the
    bare side is ``train_step_fn`` on one batch of the same shape already on the device. They
    alternate, as the other figures' repeats do: after each Lightning batch a callback times one bare
    step, and each Lightning batch is timed from the end of the previous bare step to its own end
    (so its loading and copying count). The figure is the ratio of the summed times, not of medians:
    the logging steps are part of the loop's cost.
    """
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import CSVLogger

    from ctxsae.train.module import OptimConfig, SAEModule
    from ctxsae.train.run import training_precision

    batch_windows = max(1, batch_tokens // n_ctx)
    bare = train_step_fn(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), batch_of(d_in, batch_windows * n_ctx, n_ctx, device=device))

    class Alternate(Callback):
        def __init__(self):
            self.loop_s, self.bare_s, self.since = [], [], 0.0

        def on_train_start(self, trainer, module):
            self.since = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            _synchronize()
            loop_s, bare_s = time.perf_counter() - self.since, _time_once(bare)
            if batch_idx >= warmup:  # the first batches pay for allocations and page faults
                self.loop_s.append(loop_s)
                self.bare_s.append(bare_s)
            self.since = time.perf_counter()

    steps = warmup + max(4, 2 * repeats)
    source = RandomSource(d_in, n_ctx, n_windows=int(batch_windows * steps * 1.1) + 2)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="ctxsae-bench-e2e-") as root:
        dm = datamodule(source, root, batch_windows)
        clock = Alternate()
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, precision=training_precision("auto", accelerator), gradient_clip_val=1.0,
            max_steps=steps, log_every_n_steps=10, logger=CSVLogger(root), callbacks=[clock], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        )
        module = SAEModule(TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=k)), LossConfig(auxk=1 / 32), OptimConfig(lr=1e-4, init_b_dec_tokens=0))
        trainer.fit(module, datamodule=dm)
    tokens = batch_windows * n_ctx * len(clock.loop_s)
    e2e_tok_s, bare_tok_s = tokens / sum(clock.loop_s), tokens / sum(clock.bare_s)
    ratio = e2e_tok_s / bare_tok_s
    return entry("end to end: train.py's loop / bare TopK step, tokens/s", ratio, ">= 0.8", ratio >= 0.8, device=device,
                 end_to_end_tokens_per_s=e2e_tok_s, bare_step_tokens_per_s=bare_tok_s, steps_timed=len(clock.loop_s),
                 batch_tokens=batch_windows * n_ctx)


# -- 6. memory ---------------------------------------------------------------------------------------------------------


def _memory_child(root: str, d_in: int, n_ctx: int, n_windows: int, batch_windows: int) -> None:
    """Runs in a fresh process: one pass over the training batches, then print peak RSS (JSON)."""
    keep_freed_memory()  # as train.py's process allocates
    dm = datamodule(RandomSource(d_in, n_ctx, n_windows), root, batch_windows)
    setup = _status()
    # Reset the high-water mark (Linux >= 4.0), so the pass's peak is not the setup's (which reads up
    # to 512 windows at once for the normalisation scale); both are reported.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    n = 0
    for batch in dm.train_dataloader():
        n += batch.x_BTD.shape[0]
    after = _status()
    peak = after.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
    print(json.dumps({"peak_kib": peak, "hwm_reset": reset, "setup_peak_kib": setup.get("VmHWM"), "windows_read": n,
                      "rss_anon_kib": after.get("RssAnon"), "rss_file_kib": after.get("RssFile")}))


def _status() -> dict[str, int]:
    """VmHWM / RssAnon / RssFile in KiB. VmHWM is this process image's peak RSS; ru_maxrss would
    carry the (large) parent's peak across fork + exec."""
    path = Path("/proc/self/status")
    lines = path.read_text().splitlines() if path.exists() else []
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmHWM", "RssAnon", "RssFile"))}


def bench_memory(d_in: int, n_ctx: int, base_windows: int, batch_windows: int, factors=(1, 4, 16)) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory(prefix="ctxsae-bench-mem-") as root:
        for f in factors:
            n = base_windows * f
            open_or_build(RandomSource(d_in, n_ctx, n), CacheConfig(root=root, verify=False), progress=False)
            code = (f"from ctxsae.bench import _memory_child; _memory_child({root!r}, {d_in}, {n_ctx}, {n}, {batch_windows})")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["cache_mib"] = n * n_ctx * d_in * 2 / 2**20
            rows[f"{f}x"] = row
    # Whole-process peak (imports included, as a user would see it); RssFile counts mapped cache pages.
    first, last = rows[f"{factors[0]}x"], rows[f"{factors[-1]}x"]
    ratio = last["peak_kib"] / first["peak_kib"]
    return entry(
        f"memory: peak RSS of a training data pass, cache {factors[-1]}x / {factors[0]}x", ratio, "<= 1.25 (flat)",
        ratio <= 1.25, **rows,
    )


# -- all together --------------------------------------------------------------------------------------------------------


def run_all(args) -> dict:
    """Run the figures with the sizes in ``args`` (see ``__main__``); returns the JSON-able report."""
    sizes = dict(d_in=args.d_in, d_sae=args.d_sae, k=args.k, batch_tokens=args.batch_tokens, n_ctx=args.n_ctx,
                 warmup=args.warmup, repeats=args.steps)
    report = {"machine": machine(), "args": vars(args), "entries": {}}
    torch.manual_seed(0)

    def run(name: str, fn: Callable[[], dict]) -> None:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            report["entries"][name] = fn()
        except Exception as e:  # one broken figure must not hide the others
            report["entries"][name] = skipped(name, f"error: {type(e).__name__}: {e}")
        report["entries"][name]["seconds"] = time.perf_counter() - t0

    lms: list = []

    def lm():  # loaded once, for the two LM figures
        from ctxsae.extract.lm import load_gguf_package, load_tiny

        if not lms and args.lm == "smollm2":
            try:
                lms.append(load_gguf_package())
            except Exception as e:
                print(f"  SmolLM2 unavailable ({e}); using the tiny random LM", flush=True)
                lms.append(load_tiny(n_layers=4, d_model=args.d_in))
        elif not lms:
            lms.append(load_tiny(n_layers=4, d_model=args.d_in if args.d_in % 4 == 0 else 64))
        return lms[0]

    def extraction() -> dict:
        layer = min(args.layer, lm().model.config.num_hidden_layers - 1)
        return bench_extraction(lm(), layer, args.lm_windows, args.lm_batch_windows, args.n_ctx, args.warmup, args.steps)

    def multilayer() -> dict:
        n_layers = lm().model.config.num_hidden_layers
        layers = [4, 8, 16, 24] if n_layers > 24 else list(range(n_layers))  # SmolLM2's sweep layers; all of a tiny LM
        return bench_multilayer(lm(), layers, args.lm_windows, args.lm_batch_windows, args.n_ctx, args.warmup, args.steps)

    on_device = sizes | {"device": args.device}
    figures = {
        "extraction": extraction,
        "multilayer": multilayer,
        "cache": lambda: bench_cache(**sizes),
        "saelens": lambda: bench_saelens(**on_device),
        "sparsify": lambda: bench_sparsify(**on_device),
        "roofline": lambda: bench_roofline(**on_device),
        "contextual": lambda: bench_contextual(**on_device),
        "end_to_end": lambda: bench_end_to_end(**on_device),
        "memory": lambda: bench_memory(args.d_in, args.n_ctx, args.mem_windows, max(1, args.batch_tokens // args.n_ctx)),
    }
    if args.runs:
        figures["trained"] = lambda: bench_trained(args.runs, args.baseline, args.warmup, args.steps, args.device)
    if args.shapes == "issue":
        figures["shapes"] = lambda: bench_shapes(ISSUE_SHAPES, args.n_ctx, args.warmup, args.steps, args.device)
    for name, fn in figures.items():
        if not args.only or name in args.only:
            run(name, fn)
    return report


def format_table(report: dict) -> str:
    rows = [("figure", "ratio", "target", "met")]
    for e in report["entries"].values():
        if e.get("skipped"):
            rows.append((e["figure"], "-", "-", e["skipped"]))
            continue
        rows.append((e["figure"], f"{e['ratio']:.3g}", e["target"], {True: "yes", False: "no", None: "-"}[e["met"]]))
        if e["figure"].startswith(("contextual", "trained")):
            for name, d in e["detail"].items():
                if not isinstance(d, dict):
                    continue
                cell = f"{d['cost']:.3g}" if "cost" in d else "-"
                met = {True: "yes", False: "no", None: "-"}[d["met"]] if "cost" in d else d["skipped"]
                rows.append((f"  {name}", cell, f"<= {d['target']}" if d.get("target") is not None else "-", met))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * (sum(widths) + 10))
    m = report["machine"]
    head = f"machine: {m['cpu']} | {m['torch_threads']} torch threads / {m['cpu_count']} CPUs | torch {m['torch']} | CUDA: {m['cuda']} | load {m['load_avg_1m']}"
    return "\n".join([head, m["note"], *lines])
