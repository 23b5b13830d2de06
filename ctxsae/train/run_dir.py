"""One run directory: what ``train.py`` writes there, how a run is found, and how it is opened again.

    <run>/config.yaml         the composed config of the run (the source of truth for reopening it)
    <run>/sae.safetensors     weights, normalisation scale and architecture (ctxsae.models.load_sae)
    <run>/summary.json        written last: a run with it has finished (sweeps skip it when rerun)
    <run>/failed.txt          the error that ended a failed run (the sweep report lists it)
    <run>/checkpoints/        Lightning checkpoints; last.ckpt resumes a killed run
    <run>/tb/                 TensorBoard events (training, and evaluation in files ending .eval)
    <run>/eval.json, eval.md, eval_<figure>.png   evaluate.py's results
    <run>/browse/             the feature browser (python -m ctxsae.browse)

Training, evaluation, the browser and the sweep report all go through ``RunDir`` for these paths,
and evaluation and the browser open runs through ``open_run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from ctxsae.cache.store import atomic_write_bytes
from ctxsae.errors import UserError
from ctxsae.extract.lm import resolve_device
from ctxsae.models import load_sae
from ctxsae.models.base import SAE

#: Config keys renamed since runs were first written: old run directories still open.
RENAMED_KEYS = {"data.max_windows": "data.draw_windows", "trainer.max_tokens": "max_tokens"}


class RunDir:
    """The paths of one run directory (nothing is created or read here)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    sae_file = property(lambda self: self.path / "sae.safetensors")
    summary = property(lambda self: self.path / "summary.json")
    failed = property(lambda self: self.path / "failed.txt")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    tensorboard = property(lambda self: self.path / "tb")
    eval_json = property(lambda self: self.path / "eval.json")
    eval_md = property(lambda self: self.path / "eval.md")
    browse = property(lambda self: self.path / "browse")

    @staticmethod
    def write(path: Path, text: str) -> None:
        """Write a text file of the run atomically: a reader sees the old file or the new one, never half."""
        atomic_write_bytes(path, text.encode())

    def figure(self, name: str) -> Path:
        return self.path / f"eval_{name}.png"

    @property
    def name(self) -> str:
        return self.path.name

    def load_config(self) -> DictConfig:
        """The run's config.yaml (before it is written: the one Hydra saved at launch, .hydra/config.yaml),
        with keys renamed since it was written moved to their current names."""
        cfg = OmegaConf.load(self.config if self.config.exists() else self.path / ".hydra" / "config.yaml")
        for old, new in RENAMED_KEYS.items():
            value = OmegaConf.select(cfg, old, default=None)
            if value is not None and OmegaConf.select(cfg, new, default=None) is None:
                parent, leaf = old.rsplit(".", 1)
                OmegaConf.update(cfg, new, value)
                OmegaConf.select(cfg, parent).pop(leaf)
        return cfg


def resolve_run(run: str) -> tuple[RunDir, Path]:
    """(run directory, SAE file) from a run directory or a .safetensors file inside one."""
    path = Path(run).expanduser()
    run_dir, sae_file = (RunDir(path), path / "sae.safetensors") if path.is_dir() else (RunDir(path.parent), path)
    if not path.exists():
        raise UserError(f"run={run}: no such directory or file; pass a run directory of train.py or its sae.safetensors")
    if not sae_file.exists():
        raise UserError(f"no sae.safetensors in {run_dir.path}: the run has not finished; let it finish (or resume it) first")
    if not run_dir.config.exists():
        raise UserError(f"no config.yaml next to {sae_file}: pass a run directory written by train.py")
    return run_dir, sae_file


class OpenRun(NamedTuple):
    run_dir: RunDir
    sae_file: Path
    train_cfg: DictConfig
    sae: SAE  # on the chosen device, in eval mode
    dm: Any  # ActivationDataModule of the run's cache, set up (its val split: the held-out windows)
    extractor: Any  # the LM at the hook (``LMActivations.extractor``); None without an LM or when not asked for


def open_run(run: str, device: str = "auto", with_lm: bool = True) -> OpenRun:
    """Rebuild a run's SAE, source, cache, held-out split and (``with_lm``, text data only) LM from its config.yaml."""
    from ctxsae.extract.activations import LMActivations
    from ctxsae.train.datamodule import ActivationDataModule, activation_source

    run_dir, sae_file = resolve_run(run)
    train_cfg = run_dir.load_config()
    torch_device = torch.device(resolve_device(device))
    try:
        sae = load_sae(sae_file)
    except RuntimeError as e:  # load_state_dict: the SAE's code changed since the run saved it
        raise UserError(f"{sae_file} does not fit the current code of its SAE class ({str(e).splitlines()[-1].strip()}): "
                        "retrain the run, or evaluate it from the commit it was trained with") from e
    sae = sae.to(torch_device).eval()
    source = activation_source(train_cfg)
    dm = ActivationDataModule(source, train_cfg.data, train_cfg.cache)
    dm.prepare_data()
    dm.setup("validate")
    extractor = None
    if isinstance(source, LMActivations) and with_lm:
        extractor = source.extractor
        extractor.loaded.model.to(torch_device)
        extractor.device = torch_device
    return OpenRun(run_dir, sae_file, train_cfg, sae, dm, extractor)
