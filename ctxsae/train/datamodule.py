"""The DataModule: an activation source, its on-disk cache, and batches of whole windows.

``prepare_data`` fills the cache (extraction through nnsight happens there, once, on one
process); ``setup`` opens it memory-mapped, fixes the held-out windows and the normalisation
scale. The split and the scale depend only on the cache and ``data.seed``, never on the
training seed, so every run of a sweep is evaluated on the same windows in the same units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from ctxsae.cache.dataset import CachedWindows, Windows, collate_windows
from ctxsae.cache.store import ActivationCache, CacheConfig, open_or_build, open_or_build_joint
from ctxsae.data.source import ActivationSource
from ctxsae.data.text import TextSource
from ctxsae.errors import UserError
from ctxsae.extract.activations import LMActivations
from ctxsae.ranges import at_least, between, fraction


@dataclass
class DataConfig:
    source: Any = None  # _target_ node: a text source (fortunes, hf, local) or an activation source (synthetic)
    n_ctx: int = field(default=128, metadata=at_least(1))  # tokens per window
    draw_windows: int = field(default=2048, metadata=at_least(0))  # windows drawn at random (seeded) from the whole tokenised corpus; 0 = all
    exclude_first: int = field(default=1, metadata=between(0, "n_ctx", hi_open=True))  # positions at each window start left out of loss and metrics (attention sink)
    val_fraction: float = field(default=0.05, metadata=fraction())  # share of windows held out for validation and evaluation
    batch_windows: int = field(default=32, metadata=at_least(1))  # windows per training batch (32 x 128 = 4096 tokens)
    num_workers: int = field(default=0, metadata=at_least(0))  # DataLoader worker processes (reads are memory-mapped and cheap)
    seed: int = 0  # which windows are drawn and which are held out


class EpochOrderSampler(Sampler[int]):
    """Training windows in a fresh permutation each epoch, drawn from (seed, epoch) alone; can start part-way in.

    The order of a whole run is then a function of the seed, and a resumed run that starts after the
    ``start`` windows it had consumed sees exactly the batches the uninterrupted run saw.
    """

    def __init__(self, n: int, seed: int, epoch_windows: int):
        self.n, self.seed, self.epoch_windows = n, seed, epoch_windows  # epoch_windows: whole batches only
        self.start = 0  # windows consumed before the next pass

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, offset = divmod(self.start, self.epoch_windows)
        self.start = (epoch + 1) * self.epoch_windows  # the next pass is the next epoch, from its start
        yield from np.random.default_rng([self.seed, epoch]).permutation(self.n)[offset:].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader whose state (windows consumed) Lightning saves in each checkpoint and restores on resume."""

    def __init__(self, *args, consumed: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict:
        return {"windows_consumed": self.consumed()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.start = state["windows_consumed"]


def activation_source(cfg: DictConfig) -> ActivationSource:
    """The source a composed config describes: text goes through the LM; activation sources (synthetic data) as they are."""
    source = instantiate(cfg.data.source)
    if isinstance(source, TextSource):
        return LMActivations(source, cfg.lm, cfg.data.n_ctx, cfg.data.draw_windows, cfg.data.seed)
    return source


def fill_caches(cfg: DictConfig) -> list[ActivationCache]:
    """Fill, finish or verify the activation cache a config reads; with ``lm.layers``, the caches of those
    layers (each as ``lm.layer=L`` opens it) from one LM pass."""
    source = activation_source(cfg)
    if isinstance(source, LMActivations) and cfg.lm.layers:
        joint = LMActivations(source.text, cfg.lm, cfg.data.n_ctx, cfg.data.draw_windows, cfg.data.seed, cfg.lm.layers)
        return open_or_build_joint(joint, cfg.cache)
    return [open_or_build(source, cfg.cache)]


class ActivationDataModule(L.LightningDataModule):
    def __init__(self, source: ActivationSource, data: DataConfig, cache: CacheConfig, order_seed: int = 0):
        super().__init__()
        self.source, self.cfg, self.cache_cfg, self.order_seed = source, data, cache, order_seed
        self.cache: ActivationCache | None = None

    def prepare_data(self) -> None:
        open_or_build(self.source, self.cache_cfg, verify=False)  # setup() verifies

    def setup(self, stage: str | None = None) -> None:
        if self.cache is not None:
            return
        self.cache = open_or_build(self.source, self.cache_cfg, progress=False)
        n = self.cache.n_windows
        n_val = max(1, round(n * self.cfg.val_fraction)) if self.cfg.val_fraction > 0 else 0
        if n - n_val < 1:
            raise UserError(f"the cache holds {n} window(s): too few to train and validate; raise data.draw_windows or add text")
        perm = np.random.default_rng(self.cfg.seed).permutation(n)
        self.val_idx, self.train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self.scale = self._normalisation_scale()

    @property
    def d_in(self) -> int:
        return self.cache.d_in

    def tokens_per_step(self, world_size: int) -> int:
        """Training tokens one optimiser step consumes: a batch of whole windows on each of ``world_size`` processes
        (the excluded first positions included, as ``max_tokens`` counts them)."""
        return self.cfg.batch_windows * self.cfg.n_ctx * world_size

    def _normalisation_scale(self, sample_windows: int = 512) -> float:
        """Scale so that E|x|^2 = d_in over kept training positions (Gao et al.; SAELens' 'expected_average_only_in')."""
        picks = np.linspace(0, len(self.train_idx) - 1, min(sample_windows, len(self.train_idx))).astype(int)
        idx = np.unique(self.train_idx[picks])
        total, count = 0.0, 0
        for lo in range(0, len(idx), 32):  # 32 windows at a time: setup memory stays flat as the cache grows
            x = torch.from_numpy(self.cache.read_x(idx[lo : lo + 32])).float()[:, self.cfg.exclude_first :]
            total, count = total + x.pow(2).sum().item(), count + x.shape[0] * x.shape[1]
        return float(np.sqrt(self.d_in / (total / count)))

    def dataset(self, split: str) -> CachedWindows:
        idx = {"train": self.train_idx, "val": self.val_idx}[split]
        return CachedWindows(self.cache, idx, self.scale, self.cfg.exclude_first)

    def held_out_batches(
        self, batch_windows: int, first_windows: int = 0, device: torch.device | str = "cpu", unit: float = 1.0,
    ) -> Iterator[Windows]:
        """The first ``first_windows`` held-out windows (0: all), ``batch_windows`` at a time, on ``device``,
        activations multiplied by ``unit`` (``unit_of(sae)``: in that SAE's units)."""
        ds = self.dataset("val")
        n = len(ds) if first_windows <= 0 else min(first_windows, len(ds))
        for lo in range(0, n, batch_windows):
            b = ds.__getitems__(list(range(lo, min(lo + batch_windows, n))))
            b.x_BTD.mul_(unit)
            yield b.to(device)

    def unit_of(self, sae) -> float:
        """Factor from this DataModule's normalisation to the SAE's (1 unless the SAE was trained on other data)."""
        return float(sae.act_scale) / self.scale

    def _loader_args(self) -> dict:
        return dict(batch_size=self.cfg.batch_windows, collate_fn=collate_windows, num_workers=self.cfg.num_workers,
                    persistent_workers=self.cfg.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        epoch_windows = len(ds) - len(ds) % self.cfg.batch_windows  # drop_last: whole batches only
        if epoch_windows == 0:
            raise UserError(f"the cache holds {len(ds)} training window(s), fewer than data.batch_windows="
                            f"{self.cfg.batch_windows}: lower data.batch_windows or raise data.draw_windows")
        # One optimiser step per batch on each process: the step count says how many windows were consumed.
        windows_per_step = self.cfg.batch_windows * (self.trainer.world_size if self.trainer else 1)
        return ResumableLoader(ds, sampler=EpochOrderSampler(len(ds), self.order_seed, epoch_windows), drop_last=True,
                               consumed=lambda: self.trainer.global_step * windows_per_step, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        ds = self.dataset("val")
        return DataLoader(ds, sampler=SequentialSampler(ds), **self._loader_args())

    def sample_activations(self, n_tokens: int) -> torch.Tensor:
        """[n, d_in] normalised activations at kept positions of training windows (to initialise b_dec)."""
        per_window = self.cache.n_ctx - self.cfg.exclude_first
        n_windows = min(len(self.train_idx), max(1, n_tokens // per_window))
        positions = np.random.default_rng(self.cfg.seed).choice(len(self.train_idx), n_windows, replace=False)
        batch = self.dataset("train").__getitems__(positions.tolist())
        return batch.x_BTD[batch.mask_BT]
