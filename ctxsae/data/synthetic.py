"""Synthetic activations with a known answer: does a contextual SAE find what is *new*?

Every activation is a sparse sum of known unit directions plus a little noise,
``x = acts @ features + noise``, with more features than dimensions (superposition).
Two kinds of features:

* **Region features** (the point of the dataset). They come in mutually exclusive groups,
  like languages or topics: at every position at most one feature of a group is active, and
  which one (or none) changes only at region boundaries. Region lengths are geometric; the
  magnitude is constant over a region, so once a contextual SAE has seen the onset it can carry
  the code forward exactly and spend no sparsity on it. Regions reset at document starts.
* **Token features**: i.i.d. per position. Context says nothing about them, so every SAE has to
  pay for each one.

A per-token SAE needs ``ground_truth_dense_l0`` codes per position (every active feature);
a perfect contextual code needs only ``ground_truth_l0`` (the novel events). With
``region_features=False`` (or ``mean_region_len=1``, which makes every position its own
region) context carries no information, and a contextual SAE must not beat a per-token one.

Windows are produced in fixed blocks, each seeded from (seed, block index), so any range of
windows (``generate(cfg, start, stop)``, ``SyntheticSource.chunks``) is bitwise the same slice
of the full dataset and the whole thing never has to sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ctxsae.data.source import ActivationChunk

_BLOCK_WINDOWS = 256  # windows drawn per seeded block; part of the algorithm, never a knob


@dataclass
class SyntheticConfig:
    d_in: int = 64  # activation dimension
    n_windows: int = 1024  # windows in the dataset
    n_ctx: int = 64  # positions per window
    n_region_groups: int = 4  # mutually exclusive groups of region features
    group_size: int = 4  # region features per group (>= 2: consecutive regions then differ)
    mean_region_len: float = 16.0  # mean of the geometric region length (1: no persistence)
    p_region_off: float = 0.2  # probability that a region has no active feature of its group
    region_magnitude: float = 1.0  # mean magnitude of an active region feature
    region_magnitude_jitter: float = 0.2  # magnitudes ~ U[mean - jitter, mean + jitter], fixed per region
    n_token_features: int = 128  # features active i.i.d. per position
    token_rate: float = 0.02  # probability that a token feature is active at a position
    token_magnitude: float = 1.0  # mean magnitude of an active token feature
    token_magnitude_jitter: float = 0.2  # token magnitudes ~ U[mean - jitter, mean + jitter]
    noise_std: float = 0.05  # std of i.i.d. Gaussian noise per dimension
    doc_len: int = 0  # 0: one document per window; >0: documents of this length in the stream of windows
    seed: int = 0  # fixes the feature directions and every draw
    region_features: bool = True  # False: token features only (the control)

    def __post_init__(self) -> None:
        if self.mean_region_len < 1:
            raise ValueError(f"mean_region_len={self.mean_region_len} must be >= 1 (a region spans at least one position)")
        if not 0 <= self.p_region_off <= 1 or not 0 <= self.token_rate <= 1:
            raise ValueError("p_region_off and token_rate are probabilities: keep them in [0, 1]")
        if self.region_magnitude_jitter >= self.region_magnitude or self.token_magnitude_jitter >= self.token_magnitude:
            raise ValueError("magnitude jitter must be below the mean magnitude, so active features stay positive")

    @property
    def n_region(self) -> int:
        return self.n_region_groups * self.group_size if self.region_features else 0

    @property
    def n_features(self) -> int:
        return self.n_region + self.n_token_features


class SyntheticData(NamedTuple):
    x_NTD: Tensor  # float32 activations
    doc_start_NT: Tensor  # bool, True where a document starts (always at t = 0)
    features_FD: Tensor  # unit feature directions, region features first
    acts_NTF: Tensor  # true activations (>= 0)
    onset_NTF: Tensor  # bool: a region of this feature starts here (also at a document start)
    is_region_F: Tensor  # bool: region feature (else token feature)
    group_F: Tensor  # int64: group of a region feature, -1 for token features


def feature_directions(cfg: SyntheticConfig) -> tuple[Tensor, Tensor]:
    """Random unit directions [F, D] (region features first) and the group of each feature [F]."""
    gen = torch.Generator().manual_seed(_block_seed(cfg.seed, -1))
    features = torch.randn(cfg.n_features, cfg.d_in, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    group = torch.full((cfg.n_features,), -1, dtype=torch.long)
    group[: cfg.n_region] = torch.arange(cfg.n_region) // cfg.group_size
    return features, group


def generate(cfg: SyntheticConfig, start: int = 0, stop: int | None = None) -> SyntheticData:
    """Windows [start, stop) of the dataset (default: all), identical to the same slice of the whole."""
    features, group = feature_directions(cfg)
    parts = list(_blocks(cfg, features, start, cfg.n_windows if stop is None else stop))
    x, doc_start, acts, onset = (torch.cat(p) for p in zip(*parts)) if parts else _empty(cfg)
    return SyntheticData(x, doc_start, features, acts, onset, group >= 0, group)


def _blocks(cfg: SyntheticConfig, features_FD: Tensor, start: int, stop: int) -> Iterator[tuple[Tensor, ...]]:
    """(x, doc_start, acts, onset) for windows [start, stop), one seeded block at a time."""
    stop = min(stop, cfg.n_windows)
    for b in range(start // _BLOCK_WINDOWS, -(-stop // _BLOCK_WINDOWS)):
        lo, hi = max(start - b * _BLOCK_WINDOWS, 0), min(stop - b * _BLOCK_WINDOWS, _BLOCK_WINDOWS)
        yield tuple(t[lo:hi] for t in _block(cfg, b, features_FD))


def _empty(cfg: SyntheticConfig) -> tuple[Tensor, ...]:
    T, F = cfg.n_ctx, cfg.n_features
    return torch.zeros(0, T, cfg.d_in), torch.zeros(0, T, dtype=torch.bool), torch.zeros(0, T, F), torch.zeros(0, T, F, dtype=torch.bool)


def _block(cfg: SyntheticConfig, b: int, features_FD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n0 = b * _BLOCK_WINDOWS
    N, T = min(_BLOCK_WINDOWS, cfg.n_windows - n0), cfg.n_ctx
    gen = torch.Generator().manual_seed(_block_seed(cfg.seed, b))
    doc_start = _doc_starts(n0, N, T, cfg.doc_len)

    region_acts, region_onset = (torch.zeros(N, T, 0), torch.zeros(N, T, 0, dtype=torch.bool))
    if cfg.region_features:
        region_acts, region_onset = _regions(cfg, doc_start, gen)

    fire = torch.rand(N, T, cfg.n_token_features, generator=gen) < cfg.token_rate
    token_acts = torch.zeros(fire.shape)
    token_acts[fire] = _uniform((int(fire.sum()),), cfg.token_magnitude, cfg.token_magnitude_jitter, gen)  # draws only where active

    acts = torch.cat([region_acts, token_acts], dim=-1)
    onset = torch.cat([region_onset, torch.zeros_like(token_acts, dtype=torch.bool)], dim=-1)
    x = acts @ features_FD + cfg.noise_std * torch.randn(N, T, cfg.d_in, generator=gen)
    return x, doc_start, acts, onset


def _regions(cfg: SyntheticConfig, doc_start_NT: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Region activations and onsets [N, T, groups * group_size], all groups and windows at once."""
    N, T = doc_start_NT.shape
    G, S = cfg.n_region_groups, cfg.group_size
    # A region boundary at each position with probability 1/mean (geometric lengths), and at every doc start.
    boundary = (torch.rand(N, T, G, generator=gen) < 1 / cfg.mean_region_len) | doc_start_NT[..., None]
    # Whether the region is silent and its magnitude: drawn everywhere, read at the region's first position.
    t = torch.arange(T).view(1, T, 1)
    region_start = torch.where(boundary, t, 0).cummax(1).values
    off = (torch.rand(N, T, G, generator=gen) < cfg.p_region_off).gather(1, region_start)
    mag = _uniform((N, T, G), cfg.region_magnitude, cfg.region_magnitude_jitter, gen).gather(1, region_start)
    # Which feature of the group: a running sum of steps mod S. A boundary straight after an active
    # region steps by 1..S-1, so a switch always changes the feature; at a doc start or after a silent
    # region the step is 0..S-1, so the feature is uniform and independent of what came before.
    fresh = doc_start_NT[..., None].expand(N, T, G).clone()
    fresh[:, 1:] |= off[:, :-1]
    step_any = torch.randint(0, S, (N, T, G), generator=gen)
    step_new = torch.randint(1, S, (N, T, G), generator=gen) if S > 1 else torch.zeros_like(step_any)
    step = torch.where(boundary, torch.where(fresh, step_any, step_new), 0)
    member = step.cumsum(1) % S

    one_hot = torch.nn.functional.one_hot(member, S).bool()  # [N, T, G, S]
    acts = (one_hot * (mag * ~off)[..., None]).reshape(N, T, G * S)
    onset = (one_hot & (boundary & ~off)[..., None]).reshape(N, T, G * S)
    return acts, onset


def _doc_starts(n0: int, N: int, T: int, doc_len: int) -> Tensor:
    """Windows are consecutive slices of one stream; documents of ``doc_len`` tile the stream."""
    doc_start = torch.zeros(N, T, dtype=torch.bool)
    if doc_len > 0:
        pos = (n0 + torch.arange(N)[:, None]) * T + torch.arange(T)
        doc_start = pos % doc_len == 0
    doc_start[:, 0] = True  # every window starts a document: no SAE sees across windows
    return doc_start


def _uniform(shape: tuple[int, ...], mean: float, jitter: float, gen: torch.Generator) -> Tensor:
    return mean + jitter * (2 * torch.rand(shape, generator=gen) - 1)


def _block_seed(seed: int, block: int) -> int:
    # SeedSequence mixes (seed, block) so different seeds never share a block's stream; -1 = the features.
    return int(np.random.SeedSequence([seed, block + 1]).generate_state(1, np.uint64)[0] >> 1)


# -- what a code needs ---------------------------------------------------------------------------


def ground_truth_dense_l0(data: SyntheticData) -> float:
    """Mean number of active true features per position: what a per-token SAE must encode."""
    return (data.acts_NTF != 0).sum(-1).float().mean().item()


def ground_truth_l0(data: SyntheticData, diff_code: bool = False) -> float:
    """Mean number of *novel events* per position: what a perfect contextual code must encode.

    A novel event is anything the past of the document does not predict:
      * every active token feature (context says nothing about it);
      * every region onset, including at a document start (new feature, new magnitude);
      * a group going silent inside a document (a region with no feature follows one with a feature).
    A switch from feature f to f' in the same group counts once (the onset of f'): a code that has
    learnt the group is exclusive infers that f ends. ``diff_code=True`` counts instead what a purely
    additive code (effective codes = running sum of codes) needs: every offset inside a document
    costs its own code, so a switch costs two.
    """
    acts, region = data.acts_NTF, data.is_region_F
    events = (acts[..., ~region] != 0).sum(-1).float() + data.onset_NTF.sum(-1).float()
    on = acts[..., region] != 0
    inside = ~data.doc_start_NT[:, 1:, None]  # offsets at a doc start are free: context resets there
    if diff_code:
        off_events = on[:, :-1] & ~on[:, 1:] & inside
    else:
        n_groups = int(data.group_F.max()) + 1 if bool(region.any()) else 0
        on_G = torch.zeros(*on.shape[:2], n_groups).index_add_(2, data.group_F[region], on.float()) > 0
        off_events = on_G[:, :-1] & ~on_G[:, 1:] & inside
    events[:, 1:] += off_events.sum(-1)
    return events.mean().item()


# -- the activation source ----------------------------------------------------------------------


class SyntheticSource:
    """``ActivationSource`` over the synthetic dataset: Hydra builds it with the SyntheticConfig fields."""

    def __init__(self, **fields):
        self.cfg = SyntheticConfig(**fields)
        self.d_in, self.n_ctx = self.cfg.d_in, self.cfg.n_ctx

    def fingerprint(self) -> dict:
        return {"source": f"{type(self).__module__}.{type(self).__qualname__}", **asdict(self.cfg)}

    def n_windows(self) -> int:
        return self.cfg.n_windows

    def ground_truth(self, windows: Sequence[int] | slice = slice(None)) -> SyntheticData:
        """Windows (a slice, or indices such as a DataModule's ``val_idx``) with their true features."""
        if isinstance(windows, slice) and windows.step in (None, 1):
            return generate(self.cfg, windows.start or 0, windows.stop)
        data = generate(self.cfg)
        idx = torch.as_tensor(np.asarray(range(self.cfg.n_windows)[windows] if isinstance(windows, slice) else windows))
        return data._replace(x_NTD=data.x_NTD[idx], doc_start_NT=data.doc_start_NT[idx],
                             acts_NTF=data.acts_NTF[idx], onset_NTF=data.onset_NTF[idx])

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        features, _ = feature_directions(self.cfg)
        pending: list[tuple[Tensor, Tensor]] = []  # block slices not yet yielded: each block is drawn once
        for x, doc_start, _, _ in _blocks(self.cfg, features, start, self.cfg.n_windows):
            pending.append((x, doc_start))
            while sum(len(p[0]) for p in pending) >= chunk_windows:
                x_all, ds_all = (torch.cat(t) for t in zip(*pending))
                yield self._chunk(x_all[:chunk_windows], ds_all[:chunk_windows])
                pending = [(x_all[chunk_windows:], ds_all[chunk_windows:])]
        if pending and len(pending[0][0]):
            x_all, ds_all = (torch.cat(t) for t in zip(*pending))
            yield self._chunk(x_all, ds_all)

    @staticmethod
    def _chunk(x_NTD: Tensor, doc_start_NT: Tensor) -> ActivationChunk:
        tokens = torch.full(doc_start_NT.shape, -1, dtype=torch.int32)  # no text behind synthetic activations
        return ActivationChunk(x_NTD.contiguous(), tokens, doc_start_NT.contiguous())
