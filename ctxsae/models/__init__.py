"""SAE variants: ``base.py`` holds the shared interface, every other module one variant.

Importing this package imports every variant, so the architecture registry is complete: build an
SAE from a config with ``build_sae`` and read a saved one back with ``load_sae``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import UserError
from ctxsae.models import attention, batchtopk, document_mean, jumprelu, matryoshka, mean_oracle, recurrent, region, relu, tfa, topk  # noqa: F401 (each registers its architecture)
from ctxsae.models.base import ARCHITECTURES, SAE, SAEConfig
from ctxsae.models.saelens import read_saelens

#: ``load_sae(SAELENS_PREFIX + folder)`` reads a SAELens SAE (``ctxsae.models.saelens``).
SAELENS_PREFIX = "saelens:"


def schemas() -> dict[str, type[SAEConfig]]:
    """{architecture: its config dataclass}; conf/model/<architecture>.yaml extends that schema."""
    return {name: cls.config_class for name, cls in ARCHITECTURES.items()}


def build_sae(config: SAEConfig | Mapping[str, Any]) -> SAE:
    """The SAE a config describes: a config dataclass, or a dict or DictConfig (a composed
    ``model`` group) whose ``_target_`` names the SAE class and whose other keys are its config fields."""
    if not isinstance(config, SAEConfig):
        fields = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
        config = get_class(fields["_target_"]).config_class(**fields)
    cls = get_class(config._target_)
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise TypeError(f"_target_={config._target_} is not an SAE class")
    return cls(config)


def load_sae(path: str | Path, map_location: str = "cpu") -> SAE:
    """Rebuild an SAE from a file written by ``SAE.save``, or a SAELens SAE from ``saelens:<folder>``
    (in raw units: act_scale 1); its config is ``sae.cfg``.

    Files written before the registry carry no "architecture": their config's ``_target_`` named
    the class by module path, and each module was named after its architecture
    ("ctxsae.models.recurrent.RecurrentSAE" is "recurrent"), which is how they are read.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if str(path).startswith(SAELENS_PREFIX):
        config, state = read_saelens(str(path)[len(SAELENS_PREFIX) :])
        sae = build_sae(config)
        sae.load_state_dict(state)
        return sae.to(map_location)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE file at {path}: pass the sae.safetensors of a finished run")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    fields = json.loads(metadata["config"])
    name = metadata["architecture"] if "architecture" in metadata else fields.pop("_target_").split(".")[-2]
    if name not in ARCHITECTURES:
        raise UserError(f"{path} holds a {name!r} SAE, an architecture this code does not have ({', '.join(ARCHITECTURES)}):"
                        " load it from the commit it was trained with")
    cls = ARCHITECTURES[name]
    try:
        config = cls.config_class(**fields)
    except TypeError as e:  # a field was renamed or removed since the file was written
        raise UserError(f"{path} does not fit the current config of {name!r} ({e}): load it from the commit it was trained with") from e
    sae = cls(config)
    sae.load_state_dict(load_file(str(path), device=map_location))
    return sae
