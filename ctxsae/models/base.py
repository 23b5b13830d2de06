"""The one interface every SAE shares.

An SAE maps a window of activations ``x_BTD`` (batch, positions, d_in) and its document starts
``doc_start_BT`` to an ``SAEOutput``: sparse novel codes, effective codes, the reconstruction and the
encoder's pre-activations. A per-token SAE ignores T and returns ``effective_codes is codes``. A
``ContextualSAE`` is strictly causal, resets its context wherever ``doc_start_BT`` is True, and
declares how to read its context pathway (``attribute``, ``context_stats``).

Every variant is built from its config dataclass (``TopKSAE(TopKConfig(d_in=..., k=...))``), so each
default is written once, there. Each names its ``architecture`` ("topk", "recurrent", ...: the
names of ``conf/model/*.yaml``); the names fill a registry, and a saved file names its architecture
rather than a module path, so moving code does not break old runs.

Inputs are expected *normalised*: the training data path scales raw activations by
``act_scale`` (so that E|x|^2 = d_in). The scale is a buffer, so it is saved with the weights
and ``normalize``/``denormalize`` apply it to raw activations later.
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ctxsae.ranges import at_least


class SAEOutput(NamedTuple):
    """What an SAE computes for a batch of windows (F = d_sae latents, D = d_in).

    codes:           [B, T, F] sparse *novel* codes: what is new at each position. The sparsity
                     objective (L1, L0 or a TopK constraint) applies here and only here.
    effective_codes: [B, T, F] what is active at each position once context is added back, in the
                     same dictionary basis; the decoder reads these. ``is codes`` for per-token SAEs.
    reconstruction:  [B, T, D] effective_codes W_dec + b_dec (plus any context term a variant documents).
    pre_acts:        [B, T, F] the encoder's pre-activations before its nonlinearity, for the input
                     the novel codes were chosen from: AuxK ranks dead latents by them, JumpReLU's L0
                     counts them.
    aux:             variant-specific tensors that only the variant itself reads back (held values,
                     attention weights, ...); each variant's ``forward`` lists its keys.
    """

    codes: Tensor
    effective_codes: Tensor
    reconstruction: Tensor
    pre_acts: Tensor
    aux: dict[str, Tensor]


@dataclass
class SAEConfig:
    """Fields every SAE config has. ``d_in=None`` means: take it from the activation cache (training
    fills it in before building the SAE). ``_target_`` names the SAE class for ``build_sae``."""

    _target_: str = "???"
    d_in: int | None = field(default=None, metadata=at_least(1))
    d_sae: int = field(default=2304, metadata=at_least(1))


#: architecture name -> SAE class; every concrete variant adds itself when its module is imported.
ARCHITECTURES: dict[str, type[SAE]] = {}


def window_starts(B: int, T: int, device: torch.device | str | None = None) -> Tensor:
    """doc_start [B, T] for windows that each hold one document: True at t = 0 only."""
    doc_start_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
    doc_start_BT[:, 0] = True
    return doc_start_BT


class SAE(nn.Module, abc.ABC):
    """Encoder/decoder weights, initialisation and (de)serialisation shared by all variants.

    A variant sets ``architecture`` (its name in saved files and in ``conf/model``) and
    ``config_class``, takes one instance of that config, and implements ``forward``. Callers call the
    module, ``sae(x_BTD, doc_start_BT)``, which normalises doc_start before ``forward`` sees it.
    """

    #: The variant's name in the registry, in saved files and in conf/model/<name>.yaml.
    architecture: ClassVar[str]
    #: The config dataclass the variant is built from; its fields hold every default.
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    #: Whether training keeps decoder rows at unit norm (and removes the parallel gradient).
    unit_norm_decoder: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "architecture" in cls.__dict__:
            if cls.architecture in ARCHITECTURES:
                raise TypeError(f"{cls.__qualname__}: architecture {cls.architecture!r} is already {ARCHITECTURES[cls.architecture].__qualname__}")
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.d_in is None:
            raise ValueError("SAE d_in is unset: build SAEs through ctxsae.train (it reads d_in from the cache) or pass model.d_in")
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, cfg.d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # Encoder starts as the decoder transpose (Conerly et al.; Gao et al.): good early codes.
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("act_scale", torch.ones(()))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # -- the interface ---------------------------------------------------------------------
    def __call__(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """``forward`` with ``doc_start_BT`` checked and normalised once, here, for every variant.

        doc_start_BT [B, T] marks where a document starts; it becomes bool and True at t = 0
        (nothing before a window reaches it), so variants read it as given and never build a default.
        """
        if doc_start_BT.shape != x_BTD.shape[:2]:
            raise ValueError(f"doc_start_BT has shape {tuple(doc_start_BT.shape)}; x_BTD needs [B, T] = {tuple(x_BTD.shape[:2])}")
        doc_start_BT = doc_start_BT.to(torch.bool, copy=True)
        doc_start_BT[:, 0] = True
        return super().__call__(x_BTD, doc_start_BT)

    @abc.abstractmethod
    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """Codes and reconstruction of normalised inputs x_BTD; doc_start_BT as ``__call__`` normalises it."""

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
    def save(self, path: str | Path) -> None:
        """Write weights + buffers as one safetensors file, atomically, with metadata naming the
        architecture and the config fields (``_target_`` aside: the architecture names the class)."""
        from safetensors.torch import save_file

        if ARCHITECTURES.get(getattr(self, "architecture", None)) is not type(self):
            raise TypeError(f"{type(self).__qualname__} sets no architecture of its own: give it one to save it")
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = {k: v for k, v in asdict(self.cfg).items() if k != "_target_"}
        save_file(tensors, str(tmp), metadata={"architecture": self.architecture, "config": json.dumps(config)})
        tmp.replace(path)


def context_energy_share(context_ND: Tensor, reconstruction_ND: Tensor) -> float:
    """sum_n <C_n, R_n> / sum_n |R_n|^2, both centred over positions: the share of a contextual SAE's
    reconstruction R (effective codes times W_dec) that its context pathway's part C supplies; the
    share of the current position's own codes is 1 minus it."""
    R, C = reconstruction_ND - reconstruction_ND.mean(0), context_ND - context_ND.mean(0)
    return ((C * R).sum() / R.pow(2).sum().clamp_min(1e-12)).item()


class ContextualSAE(SAE):
    """An SAE whose codes at position t also read earlier positions of t's document.

    It is strictly causal (nothing at s > t reaches the outputs at t) and resets at every document
    start. Its effective codes are made of novel codes from several positions, and it says which.
    """

    @abc.abstractmethod
    def attribute(self, out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """(position s <= t, contribution) pairs that sum to out.effective_codes[b, t, i]."""

    @abc.abstractmethod
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """Size and use of the context pathway over all positions of ``out`` (JSON-able figures)."""
