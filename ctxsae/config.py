"""Structured configs: the schema Hydra checks every composed config against.

Each concern keeps its own dataclass next to its code (``DataConfig`` beside the DataModule,
``LossConfig`` beside the objective, one ``*Config`` per SAE file); this module only assembles
them and registers them in Hydra's ConfigStore, so a typo or a wrong type fails at start-up.
SAE configs are registered under ``schema/model`` and pulled into ``conf/model/*.yaml`` by
their defaults list; ``_target_`` then names the class: the registry is Hydra itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from ctxsae.cache.store import CacheConfig
from ctxsae.extract.activations import LMConfig
from ctxsae.train.datamodule import DataConfig
from ctxsae.train.module import OptimConfig
from ctxsae.train.objective import LossConfig


@dataclass
class TrainerConfig:
    max_tokens: int = 1_000_000  # training length in tokens (all positions of the batch windows)
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # e.g. ddp
    precision: str = "auto"  # auto: bf16-mixed on a GPU that supports it (TF32 matmuls), 32-true on the CPU
    gradient_clip_val: float = 1.0
    log_every_n_steps: int = 10
    val_every_n_steps: int = 100  # validation FVU / L0 on held-out windows
    checkpoint_every_n_steps: int = 100  # a killed run resumes from the latest of these
    enable_progress_bar: bool = True


@dataclass
class TrainConfig:
    model: Any = None  # an SAE config; its schema comes from the chosen conf/model/*.yaml
    data: DataConfig = field(default_factory=DataConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    logger: Any = None  # _target_ node of a Lightning logger
    seed: int = 0  # SAE initialisation and batch order
    resume: str | None = None  # a checkpoint or run directory to resume; default: this run dir's last.ckpt


def register_configs() -> None:
    from ctxsae.models import schemas

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in schemas().items():
        cs.store(group="schema/model", name=name, node=node)
