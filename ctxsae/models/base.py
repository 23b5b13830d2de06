"""The one interface every SAE shares.

An SAE maps a window of activations ``x_BTD`` (batch, positions, d_in) to three things:

* ``codes`` [B, T, F]: the sparse *novel* codes. The sparsity objective (L1, L0 or a TopK
  constraint) applies here and only here.
* ``effective_codes`` [B, T, F]: what is active at each position once context is added back,
  in the same dictionary basis. The decoder reads these.
* ``reconstruction`` [B, T, D] = ``effective_codes @ W_dec + b_dec`` (plus any context term a
  variant documents).

A per-token SAE ignores T and returns ``effective_codes is codes``. A contextual SAE is strictly
causal and resets its context wherever ``doc_start_BT`` is True.

Inputs are expected *normalised*: the training data path scales raw activations by
``act_scale`` (so that E|x|^2 = d_in). The scale is a buffer, so it is saved with the weights
and ``normalize``/``denormalize`` apply it to raw activations later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn


class SAEOutput(NamedTuple):
    codes: Tensor  # [B, T, F] sparse novel codes
    effective_codes: Tensor  # [B, T, F] codes after context; what the decoder reads
    reconstruction: Tensor  # [B, T, D]
    aux: dict[str, Tensor]  # variant-specific tensors (pre-activations, state, attention)


@dataclass
class SAEConfig:
    """Fields every SAE config has. ``d_in=None`` means: take it from the activation cache."""

    _target_: str = "???"
    d_in: int | None = None
    d_sae: int = 2304


class SAE(nn.Module):
    """Encoder/decoder weights, initialisation and (de)serialisation shared by all variants."""

    #: Whether training keeps decoder rows at unit norm (and removes the parallel gradient).
    unit_norm_decoder: bool = True

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        if d_in is None:
            raise ValueError("SAE d_in is unset: build SAEs through ctxsae.train (it reads d_in from the cache) or pass model.d_in")
        self.d_in, self.d_sae = d_in, d_sae
        W_dec = torch.randn(d_sae, d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # Encoder starts as the decoder transpose (Conerly et al.; Gao et al.): good early codes.
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("act_scale", torch.ones(()))

    # -- the interface ---------------------------------------------------------------------
    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor | None = None) -> SAEOutput:
        raise NotImplementedError

    def sparsity_penalty(self, out: SAEOutput) -> Tensor:
        """Per-position sparsity cost [B, T] of ``out.codes``; zero where sparsity is structural (TopK)."""
        return out.codes.new_zeros(out.codes.shape[:2])

    def auxiliary_loss(self, x_BTD: Tensor, out: SAEOutput, dead_F: Tensor) -> Tensor:
        """Per-position auxiliary loss [B, T] given the currently dead latents (AuxK); zero by default."""
        return out.codes.new_zeros(out.codes.shape[:2])

    def nested_losses(self, x_BTD: Tensor, out: SAEOutput) -> dict[str, Tensor]:
        """Reconstruction costs [B, T] beyond the full one, by name and already weighted, that the objective
        adds to its mse term (Matryoshka's nested prefixes); none by default."""
        return {}

    # -- shared pieces ---------------------------------------------------------------------
    def pre_acts(self, x_BTD: Tensor) -> Tensor:
        """(x - b_dec) W_enc + b_enc, written so that training never needs dL/dx.

        In the textbook form autograd backpropagates into x - b_dec, one more [N, d_in] x [d_in, d_sae]
        product, only to sum it into b_dec's gradient. With the bias folded (b_enc - b_dec W_enc) the
        input, which needs no gradient, gets none: a third of the encoder's training FLOPs saved.
        """
        return x_BTD @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    def decode(self, codes_BTF: Tensor) -> Tensor:
        return codes_BTF @ self.W_dec + self.b_dec

    @torch.no_grad()
    def init_from_data(self, x_ND: Tensor) -> None:
        """Centre the decoder bias on the data mean, so early codes model variation, not the offset."""
        self.b_dec.copy_(x_ND.mean(0))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component that would only change decoder row norms."""
        if self.W_dec.grad is None:
            return
        W = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec.grad -= (self.W_dec.grad * W).sum(1, keepdim=True) * W

    def normalize(self, x_raw: Tensor) -> Tensor:
        return x_raw * self.act_scale

    def denormalize(self, x: Tensor) -> Tensor:
        return x / self.act_scale

    # -- saving ------------------------------------------------------------------------------
    def save(self, path: str | Path, config: dict) -> None:
        """Write weights + buffers and the resolved model config as one safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(tmp), metadata={"config": json.dumps(config)})
        tmp.replace(path)


def load_sae(path: str | Path, map_location: str = "cpu") -> tuple[SAE, dict]:
    """Rebuild an SAE from a file written by ``SAE.save``: its config's ``_target_`` names the class."""
    from hydra.utils import instantiate
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE file at {path}: pass the sae.safetensors of a finished run")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    sae = instantiate(config)
    sae.load_state_dict(load_file(str(path), device=map_location))
    return sae, config
