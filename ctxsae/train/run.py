"""One training run, from a composed config to a saved SAE and a printed summary.

    trainer, callbacks, logger (built first: a bad setting fails before any work)
    source -> cache -> DataModule -> SAE (d_in from the cache) -> SAEModule -> Trainer.fit -> sae.safetensors

Everything a run writes goes into its run directory (``ctxsae.train.run_dir``); a killed run
resumes from ``checkpoints/last.ckpt`` when rerun with the same ``hydra.run.dir``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import UserError
from ctxsae.metrics import MetricsConfig, accumulate, held_out_accumulators
from ctxsae.models import build_sae
from ctxsae.train.callbacks import Throughput
from ctxsae.train.datamodule import ActivationDataModule, activation_source
from ctxsae.train.loggers import TokenSteps
from ctxsae.train.module import SAEModule
from ctxsae.train.run_dir import RunDir


def resume_path(cfg: DictConfig, run_dir: RunDir) -> str | None:
    if cfg.resume:
        path = Path(cfg.resume)
        path = RunDir(path).last_checkpoint if path.is_dir() else path
        if not path.exists():
            raise UserError(f"resume={cfg.resume}: no checkpoint at {path}; pass a .ckpt file or a run directory with checkpoints/last.ckpt")
        return str(path)
    return str(run_dir.last_checkpoint) if run_dir.last_checkpoint.exists() else None


def training_precision(precision: str, accelerator: str) -> str:
    """Resolve ``trainer.precision=auto``: bf16-mixed with TF32 float32 matmuls on a GPU, 32-true on the CPU."""
    if precision != "auto":
        return precision
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    torch.set_float32_matmul_precision("high")  # TF32 for what stays float32 (optimizer, decoder renormalisation)
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"


def build_group(cfg: DictConfig, key: str, **kwargs):
    """Instantiate the ``_target_`` node at the dotted ``key`` (``logger``, ``callbacks.model_checkpoint``); a wrong
    argument is a one-line error naming the key and its config group."""
    try:
        return instantiate(OmegaConf.select(cfg, key), **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise
        raise UserError(f"{key}: {e.__cause__ or e} (see conf/{key.split('.')[0]}/ and the class's arguments)") from e


def build_trainer(cfg: DictConfig, run_dir: RunDir) -> tuple[L.Trainer, Throughput]:
    """The Lightning Trainer with the run's logger and callbacks, writing into ``run_dir``."""
    callbacks = {}
    for name in cfg.callbacks:
        kwargs = {"dirpath": run_dir.checkpoints} if name == "model_checkpoint" else {}
        callback = build_group(cfg, f"callbacks.{name}", **kwargs)
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue  # trainer.enable_progress_bar=false turns it off (Lightning refuses the pair)
        callbacks[name] = callback
    logger = build_group(cfg, "logger", save_dir=str(run_dir.path))
    precision = training_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "auto"))
    trainer = build_group(cfg, "trainer", default_root_dir=str(run_dir.path), logger=logger,
                          callbacks=list(callbacks.values()), precision=precision)
    throughput = next((c for c in callbacks.values() if isinstance(c, Throughput)), None)
    if throughput is None:
        raise UserError("callbacks: the throughput callback (ctxsae.train.callbacks.Throughput) is missing; keep it in conf/callbacks")
    return trainer, throughput


def train(cfg: DictConfig, run_dir: Path | RunDir) -> dict | None:
    """Train one SAE; the summary on the process that wrote the results (None on other DDP ranks)."""
    run_dir = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir
    if run_dir.summary.exists():  # rerunning a sweep skips the runs it already finished
        print(f"{run_dir.path} already holds a finished run: skipping it (delete summary.json to retrain)")
        return json.loads(run_dir.summary.read_text())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, throughput = build_trainer(cfg, run_dir)
    dm = ActivationDataModule(activation_source(cfg), cfg.data, cfg.cache, order_seed=cfg.seed)
    dm.prepare_data()
    dm.setup("fit")

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg["d_in"] is None:
        model_cfg["d_in"] = dm.d_in
    elif model_cfg["d_in"] != dm.d_in:
        raise UserError(f"model.d_in={model_cfg['d_in']} but the activations have d_model {dm.d_in}: drop model.d_in (it is read from the cache) or change lm/layer")
    sae = build_sae(model_cfg)
    sae.act_scale.fill_(dm.scale)
    module = SAEModule(sae, instantiate(cfg.loss), instantiate(cfg.optim))

    # Each optimizer step consumes one batch per DDP process: the token budget sets the step count.
    batch_tokens = dm.tokens_per_step(trainer.world_size)
    trainer.fit_loop.epoch_loop.max_steps = math.ceil(cfg.max_tokens / batch_tokens)
    for logger in trainer.loggers:
        if isinstance(logger, TokenSteps):  # their x-axis: training tokens
            logger.tokens_per_step = batch_tokens
    run_dir.write(run_dir.config, OmegaConf.to_yaml(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg, run_dir))
    trainer.validate(module, datamodule=dm, verbose=False)  # the last point of the validation curves
    if not trainer.is_global_zero:  # under DDP one process writes the results
        return None

    sae.save(run_dir.sae_file)
    # Whole-split figures, as evaluate.py computes them: one pass over the held-out windows, no LM.
    device = next(sae.parameters()).device
    batches = dm.held_out_batches(cfg.data.batch_windows, device=device)
    held_out = accumulate(sae.eval(), batches, held_out_accumulators(sae, MetricsConfig(), device))
    summary = {
        "model": model_cfg["_target_"].rsplit(".", 1)[-1],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "fvu": held_out["reconstruction"]["fvu"],
        "l0": held_out["sparsity"]["l0"],
        "l0_effective": held_out["sparsity"]["l0_effective"],
        "dead_fraction": float(module.dead_F().float().mean()),
        "held_out": held_out,
        "train_tokens": int(module.global_step * batch_tokens),
        "train_tokens_per_s": throughput.tokens_per_s * trainer.world_size,
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
        "extract_tokens_per_s": dm.cache.manifest.get("extract_tokens_per_s"),
        "cache": str(dm.cache.folder),
        "run_dir": str(run_dir.path),
        "sae_file": str(run_dir.sae_file),
        "tensorboard": f"tensorboard --logdir {run_dir.path}",
    }
    run_dir.write(run_dir.summary, json.dumps(summary, indent=1))
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
