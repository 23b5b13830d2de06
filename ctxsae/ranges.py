"""Allowed ranges of numeric config fields, declared beside the fields and checked before any work.

A config dataclass declares a field's range in its metadata,

    k: int = field(default=32, metadata=between(1, "d_sae"))   # a bound may name a sibling field
    lr: float = field(default=1e-3, metadata=above(0))

and ``check_ranges(cfg)`` walks a composed config (every node whose type is such a dataclass, as
Hydra's structured configs keep them) and raises a one-line ``UserError`` naming the first field
out of range and its allowed range. Entry points call it before they create, open or load anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import UserError


@dataclass(frozen=True)
class Range:
    lo: float | str | None = None  # a number, the name of a sibling field, or None (unbounded)
    hi: float | str | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False

    def bound(self, b: float | str | None, node: Any) -> float | None:
        return node[b] if isinstance(b, str) else b

    def contains(self, value: float, node: Any) -> bool:
        lo, hi = self.bound(self.lo, node), self.bound(self.hi, node)
        above_lo = lo is None or (value > lo if self.lo_open else value >= lo)
        below_hi = hi is None or (value < hi if self.hi_open else value <= hi)
        return above_lo and below_hi

    def describe(self, name: str, node: Any) -> str:
        def shown(b):
            return f"{b} ({node[b]})" if isinstance(b, str) else f"{b:g}"

        if self.hi is None:
            return f"{name} {'>' if self.lo_open else '>='} {shown(self.lo)}"
        lo = f"{shown(self.lo)} {'<' if self.lo_open else '<='} " if self.lo is not None else ""
        return f"{lo}{name} {'<' if self.hi_open else '<='} {shown(self.hi)}"


def between(lo: float | str | None, hi: float | str | None, *, lo_open: bool = False, hi_open: bool = False) -> dict:
    """Field metadata: lo <= value <= hi (either end open, or None for unbounded)."""
    return {"range": Range(lo, hi, lo_open, hi_open)}


def at_least(lo: float | str) -> dict:
    return between(lo, None)


def above(lo: float | str) -> dict:
    return between(lo, None, lo_open=True)


def fraction(*, hi_open: bool = True) -> dict:
    """A share: 0 <= value < 1 (or <= 1)."""
    return between(0, 1, hi_open=hi_open)


def check_ranges(cfg: Any, path: str = "") -> None:
    """Raise a one-line UserError for the first numeric field of ``cfg`` outside its declared range."""
    if isinstance(cfg, DictConfig):
        schema = OmegaConf.get_type(cfg)
        ranges = {f.name: f.metadata["range"] for f in dataclasses.fields(schema) if "range" in f.metadata} if (
            dataclasses.is_dataclass(schema)) else {}
        for key in cfg:
            if key == "hydra" or OmegaConf.is_missing(cfg, key):
                continue
            if key in ranges:
                value = cfg[key]
                if value is not None and not ranges[key].contains(value, cfg):
                    raise UserError(f"{path}{key}={value} is out of range: allowed {ranges[key].describe(str(key), cfg)}")
            elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
                # Only ranged fields are resolved: others may point at Hydra's runtime, unset before a run starts.
                check_ranges(cfg[key], f"{path}{key}.")
    elif dataclasses.is_dataclass(cfg):
        check_ranges(OmegaConf.structured(cfg), path)
