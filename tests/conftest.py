"""Shared test helpers: a short, real Lightning fit of an SAE on in-memory windows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ctxsae.models.base import SAE, window_starts
from ctxsae.train.module import OptimConfig, SAEModule
from ctxsae.cache.dataset import Windows
from ctxsae.train.objective import LossConfig


def _collate(items):
    x, doc_start = (torch.stack(t) for t in zip(*items))
    mask = torch.ones(doc_start.shape, dtype=torch.bool)
    return Windows(x, torch.full(doc_start.shape, -1), doc_start, mask)


def fit_sae(
    sae: SAE,
    x_NTD: torch.Tensor,
    doc_start_NT: torch.Tensor | None = None,
    loss: LossConfig | None = None,
    steps: int = 300,
    lr: float = 3e-3,
    batch_windows: int = 32,
    seed: int = 0,
) -> SAEModule:
    """Train ``sae`` for ``steps`` Adam steps through the real SAEModule; returns the module."""
    L.seed_everything(seed, verbose=False)
    if doc_start_NT is None:
        doc_start_NT = window_starts(*x_NTD.shape[:2])
    sae.init_from_data(x_NTD.reshape(-1, x_NTD.shape[-1]))
    loader = DataLoader(TensorDataset(x_NTD, doc_start_NT), batch_size=batch_windows, shuffle=True, collate_fn=_collate)
    module = SAEModule(sae, loss or LossConfig(), OptimConfig(lr=lr, warmup_steps=10, init_b_dec_tokens=0))
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    return module


@pytest.fixture
def fit():
    return fit_sae


def train_run(run_dir: Path, overrides: list[str]) -> Path:
    """``train.py`` with ``overrides``, in-process (as Hydra composes it), into ``run_dir``; returns it."""
    from hydra import compose, initialize_config_dir

    from ctxsae.config import register_configs
    from ctxsae.train.run import train

    register_configs()
    run_dir.mkdir()  # Hydra would make it
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))])
def device(request) -> str:
    """Each device a test should hold on: the CPU, and the GPU where there is one."""
    return request.param



@pytest.fixture
def tiny_book(tmp_path):
    from tests.book import write_tiny_book

    return write_tiny_book(tmp_path / "debian-reference")
