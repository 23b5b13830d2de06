"""Anything that produces windows of activations, and the chunks it produces them in.

Two producers exist: LM activations extracted with nnsight (``ctxsae.extract``) and the
synthetic ground-truth generator (``ctxsae.data.synthetic``); the activation cache
(``ctxsae.cache``) consumes them. Both are deterministic given their ``fingerprint()``, which is
what keys the cache. The types live here, in the lowest package that produces chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from torch import Tensor

from ctxsae.data.windows import TokenLabels


class ActivationChunk(NamedTuple):
    x_NTD: Tensor  # float activations, raw (not normalised)
    tokens_NT: Tensor  # int32 token ids; -1 where there is no text (synthetic data)
    doc_start_NT: Tensor  # bool, True where a document starts (always at t = 0)
    labels: TokenLabels | None = None  # per-token region labels, where the text has them


class ActivationSource(Protocol):
    d_in: int
    n_ctx: int

    def fingerprint(self) -> dict:
        """JSON-able description of everything that determines the activations."""

    def n_windows(self) -> int:
        """How many windows the source produces in total."""

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        """Windows [start, n_windows) in order, ``chunk_windows`` at a time (the last may be shorter)."""


class JointSource(Protocol):
    """Several activation sources filled in one pass (one LM forward, hooks at several layers)."""

    parts: Sequence[ActivationSource]  # each keyed (``fingerprint``) and stored as if extracted alone

    def n_windows(self) -> int:
        """How many windows every part produces."""

    def joint_chunks(self, start: int, chunk_windows: int) -> Iterator[list[ActivationChunk]]:
        """As ``ActivationSource.chunks``, one chunk per part (same windows) at a time."""
