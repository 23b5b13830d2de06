"""Structured configs: the schema Hydra checks every composed config against.

Each concern keeps its own dataclass next to its code (``DataConfig`` beside the DataModule,
``LossConfig`` beside the objective, one ``*Config`` per SAE file); this module only assembles
them and registers them in Hydra's ConfigStore, so a typo or a wrong type fails at start-up.
SAE configs are registered under ``schema/model`` and pulled into ``conf/model/*.yaml`` by
their defaults list; ``_target_`` then names the class: the registry is Hydra itself. The
trainer, its callbacks and the logger are Lightning's own classes, built from their ``_target_``
config groups (``conf/trainer``, ``conf/callbacks``, ``conf/logger``) before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ctxsae.cache.store import CacheConfig
from ctxsae.errors import UserError, exit_with
from ctxsae.extract.activations import LMConfig
from ctxsae.ranges import at_least, check_ranges
from ctxsae.train.datamodule import DataConfig
from ctxsae.train.module import OptimConfig
from ctxsae.train.objective import LossConfig


@dataclass
class TrainConfig:
    model: Any = None  # an SAE config; its schema comes from the chosen conf/model/*.yaml
    data: DataConfig = field(default_factory=DataConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    trainer: Any = None  # _target_ node: lightning.pytorch.Trainer and its arguments
    callbacks: Any = None  # {name: _target_ node} of Lightning callbacks
    logger: Any = None  # _target_ node of a Lightning logger
    max_tokens: int = field(default=1_000_000, metadata=at_least(1))  # training length in tokens (all positions of the batch windows)
    seed: int = 0  # SAE initialisation and batch order
    resume: str | None = None  # a checkpoint or run directory to resume; default: this run dir's last.ckpt


def register_configs() -> None:
    from ctxsae.models import schemas

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in schemas().items():
        cs.store(group="schema/model", name=name, node=node)


class CheckRanges(Callback):
    """Every numeric field in its declared range (``ctxsae.ranges``) before Hydra creates a run directory.

    Named in conf/train.yaml's ``hydra.callbacks``. A multirun checks its shared config here; the
    values each job sweeps are checked again at the start of the job (train.py). The trainer's own
    arguments are Lightning's to check, when the trainer is built (before any work).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_if_out_of_range(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_if_out_of_range(config)


def exit_if_out_of_range(cfg: DictConfig) -> None:
    """``check_ranges``, ending the program with its one line (a Hydra callback runs outside the entry point)."""
    try:
        check_ranges(cfg)
    except UserError as e:
        exit_with(e)
