"""One training run, from a composed config to a saved SAE and a printed summary.

    source -> cache -> DataModule -> SAE (d_in from the cache) -> SAEModule -> Trainer -> sae.safetensors

A run directory holds everything a run writes: ``checkpoints/`` (a killed run resumes from
``last.ckpt`` when rerun with the same ``hydra.run.dir``), TensorBoard events under ``tb/``,
``sae.safetensors`` (weights, normalisation scale and resolved config) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ctxsae.cache.source import ActivationSource
from ctxsae.cache.store import ActivationCache, open_or_build
from ctxsae.errors import UserError
from ctxsae.evaluate import evaluate_fast
from ctxsae.extract.activations import LMActivations
from ctxsae.train.datamodule import ActivationDataModule
from ctxsae.train.module import SAEModule


def build_source(cfg: DictConfig) -> ActivationSource:
    """Text sources go through the LM; activation sources (synthetic data) are used as they are."""
    source = instantiate(cfg.data.source)
    if hasattr(source, "documents"):
        return LMActivations(source, cfg.lm, cfg.data.n_ctx, cfg.data.max_windows, cfg.data.seed)
    return source


def extract(cfg: DictConfig) -> ActivationCache:
    """Fill, finish or verify the activation cache that training runs with ``cfg`` read."""
    return open_or_build(build_source(cfg), cfg.cache)


class Throughput(Callback):
    """Training tokens per second, timing only the training batches (not validation or checkpoints)."""

    def __init__(self):
        self.tokens, self.seconds, self._t0 = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t0
        self.tokens += batch.x_BTD.shape[0] * batch.x_BTD.shape[1]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.resume:
        path = Path(cfg.resume)
        path = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not path.exists():
            raise UserError(f"resume={cfg.resume}: no checkpoint at {path}; pass a .ckpt file or a run directory with checkpoints/last.ckpt")
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


def training_precision(precision: str, accelerator: str) -> str:
    """Resolve ``trainer.precision=auto``: bf16-mixed with TF32 float32 matmuls on a GPU, 32-true on the CPU."""
    if precision != "auto":
        return precision
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    torch.set_float32_matmul_precision("high")  # TF32 for what stays float32 (optimizer, decoder renormalisation)
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"


def train(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Train one SAE; the summary on the process that wrote the results (None on other DDP ranks)."""
    finished = run_dir / "summary.json"
    if finished.exists():  # rerunning a sweep skips the runs it already finished
        print(f"{run_dir} already holds a finished run: skipping it (delete summary.json to retrain)")
        return json.loads(finished.read_text())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = ActivationDataModule(build_source(cfg), cfg.data, cfg.cache)
    dm.prepare_data()
    dm.setup("fit")

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg["d_in"] is None:
        model_cfg["d_in"] = dm.d_in
    elif model_cfg["d_in"] != dm.d_in:
        raise UserError(f"model.d_in={model_cfg['d_in']} but the activations have d_model {dm.d_in}: drop model.d_in (it is read from the cache) or change lm/layer")
    sae = instantiate(model_cfg)
    sae.act_scale.fill_(dm.scale)

    module = SAEModule(sae, instantiate(cfg.loss), instantiate(cfg.optim))
    throughput = Throughput()
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_last=True, save_top_k=1,
    )
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=training_precision(t.precision, t.accelerator), gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps, val_check_interval=t.val_every_n_steps,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False, logger=instantiate(cfg.logger), callbacks=[checkpoints, throughput],
        default_root_dir=run_dir,
    )
    # Each optimizer step consumes one batch per DDP process: the token budget sets the step count.
    batch_tokens = cfg.data.batch_windows * cfg.data.n_ctx * trainer.world_size
    trainer.fit_loop.epoch_loop.max_steps = math.ceil(t.max_tokens / batch_tokens)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg, run_dir))
    trainer.validate(module, datamodule=dm, verbose=False)  # the last point of the validation curves
    if not trainer.is_global_zero:  # under DDP one process writes the results
        return None

    sae.save(run_dir / "sae.safetensors", config=model_cfg)
    # Whole-split figures, as evaluate.py computes them (val/fvu averages per-batch FVUs, each against
    # its own batch's variance: a little higher, and only for the curves).
    fast = evaluate_fast(sae, dm)  # reconstruction, sparsity, temporal, context; no LM
    summary = {
        "model": model_cfg["_target_"].rsplit(".", 1)[-1],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "fvu": fast["reconstruction"]["fvu"],
        "l0": fast["sparsity"]["l0"],
        "l0_effective": fast["sparsity"]["l0_effective"],
        "dead_fraction": float(module.dead_F().float().mean()),
        "eval_fast": fast,
        "train_tokens": int(module.global_step * batch_tokens),
        "train_tokens_per_s": throughput.tokens_per_s * trainer.world_size,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "extract_tokens_per_s": dm.cache.manifest.get("extract_tokens_per_s"),
        "cache": str(dm.cache.folder),
        "run_dir": str(run_dir),
        "sae_file": str(run_dir / "sae.safetensors"),
        "tensorboard": f"tensorboard --logdir {run_dir}",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(s: dict) -> str:
    extract = f"{s['extract_tokens_per_s']:.0f} tok/s" if s.get("extract_tokens_per_s") else "cached"
    return "\n".join(
        [
            f"== ctxsae run summary: {s['model']} (d_in {s['d_in']}, d_sae {s['d_sae']}) ==",
            f"  held-out FVU       {s['fvu']:.4f}",
            f"  L0 novel codes     {s['l0']:.2f}",
            f"  L0 effective codes {s['l0_effective']:.2f}",
            f"  dead features      {100 * s['dead_fraction']:.1f}%",
            f"  training           {s['train_tokens']:,} tokens at {s['train_tokens_per_s']:.0f} tok/s"
            f" ({s.get('device', '?')}, {s.get('precision', '?')})",
            f"  extraction         {extract}  (cache: {s['cache']})",
            f"  SAE weights        {s['sae_file']}",
            f"  TensorBoard        {s['tensorboard']}",
        ]
    )
