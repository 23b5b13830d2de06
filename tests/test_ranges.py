"""Every numeric config field is range-checked before any work: one line naming the field and its range."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ctxsae.config import register_configs
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig
from ctxsae.ranges import Range, check_ranges
from tests.test_train import run

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "data", "lm", "loss")  # the trainer group is Lightning's Trainer: it checks its own arguments


def ranged_fields(cfg: DictConfig, path: str = ""):
    """(dotted name, Range, the node holding it) of every field of ``cfg`` that declares a range."""
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        for f in dataclasses.fields(schema):
            if "range" in f.metadata:
                yield f"{path}{f.name}", f.metadata["range"], cfg
    for key in cfg:
        if key == "hydra" or OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        if isinstance(cfg[key], DictConfig):
            yield from ranged_fields(cfg[key], f"{path}{key}.")


def out_of_range(r: Range, node: DictConfig, integer: bool) -> list[float]:
    step = 1 if integer else 0.5
    values = []
    if r.lo is not None:
        lo = r.bound(r.lo, node)
        values.append(lo if r.lo_open else lo - step)
    if r.hi is not None:
        hi = r.bound(r.hi, node)
        values.append(hi if r.hi_open else hi + step)
    return values


def every_option_composed():
    """The train config with each option of each config group in turn (the others at their defaults)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield compose("train")
        for group in GROUPS:
            for option in sorted((CONF / group).glob("*.yaml")):
                yield compose("train", overrides=[f"{group}={option.stem}"])


def test_every_numeric_field_of_every_config_group_rejects_values_outside_its_range():
    checked = set()
    for cfg in every_option_composed():
        check_ranges(cfg)  # the shipped defaults are in range
        for name, r, node in ranged_fields(cfg):
            key = name.rsplit(".", 1)[-1]
            integer = node[key] is None or isinstance(node[key], int)  # d_in: None until the cache is read
            for bad in out_of_range(r, node, integer):
                broken = cfg.copy()
                OmegaConf.update(broken, name, int(bad) if integer else float(bad))
                with pytest.raises(UserError) as e:
                    check_ranges(broken)
                message = str(e.value)
                assert "\n" not in message and message.startswith(f"{name}=") and "allowed" in message and key in message
                checked.add(name)
    assert {"model.k", "model.d_sae", "optim.lr", "data.batch_windows", "data.val_fraction", "lm.layer",
            "max_tokens", "cache.shard_windows", "model.threshold_momentum", "model.drop_below"} <= checked
    assert len(checked) >= 35  # (the trainer group is Lightning's own arguments, checked by Lightning)


def test_eval_config_fields_are_checked_too():
    with pytest.raises(UserError, match=r"^batch_windows=0 is out of range: allowed batch_windows >= 1$"):
        check_ranges(EvalConfig(run="x", batch_windows=0))


def test_train_py_ends_with_one_line_and_leaves_no_run_directory(tmp_path):
    result = run(tmp_path, "model.k=5000")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: model.k=5000 is out of range: allowed 1 <= k <= d_sae (128)", result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
