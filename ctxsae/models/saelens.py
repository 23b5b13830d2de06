"""The SAELens file format (``cfg.json`` + ``sae_weights.safetensors``), written and read without SAELens.

Not an SAE variant: the bridge between the per-token variants here and SAELens's inference classes,

    ReLUSAE      <-> "standard"   z = ReLU((x - b_dec) W_enc + b_enc)
    TopKSAE      <-> "topk"       z = ReLU(TopK_k(same pre-activations)); rescale_acts_by_decoder_norm = False
    BatchTopKSAE  -> "jumprelu"   its inference rule, pre * (pre > threshold), with the one global threshold
                                  copied to every latent (SAELens saves its own BatchTopK SAEs the same way)
    JumpReLUSAE  <-> "jumprelu"   z = pre * (pre > theta), theta = exp(log_threshold)

Units. An SAE here takes *normalised* activations, ``x = x_raw * act_scale``; a SAELens SAE with
``normalize_activations = "none"`` takes raw ones. Writing folds the scale s into the weights,

    W_enc <- s W_enc,   W_dec <- W_dec / s,   b_dec <- b_dec / s       (b_enc and thresholds unchanged)

so the pre-activations (x_raw - b_dec/s)(s W_enc) + b_enc, and hence the codes, are exactly the
normalised SAE's, and the reconstruction comes out in raw units (what SAELens's own
``fold_activation_norm_scaling_factor`` does). Reading gives an SAE with ``act_scale = 1``: it takes
raw activations, and evaluation (which feeds every SAE in its own units) handles it beside runs
trained here. SAELens options that only re-parametrise the same map are folded in when read
(``rescale_acts_by_decoder_norm``, ``apply_b_dec_to_input = False``); ones that act per token at run
time (``layer_norm``, ``constant_norm_rescale``, ...) are refused.

Contextual SAEs have no SAELens counterpart (their code at t depends on earlier positions) and are
refused with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from ctxsae.errors import UserError
from ctxsae.models.base import SAE
from ctxsae.models.batchtopk import BatchTopKSAE
from ctxsae.models.jumprelu import JumpReLUConfig, JumpReLUSAE
from ctxsae.models.relu import ReLUConfig, ReLUSAE
from ctxsae.models.topk import TopKConfig, TopKSAE

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
#: SAELens version whose cfg.json layout this module writes (6.x: architecture + metadata block).
FORMAT_VERSION = "6.0.0"
#: Our per-token classes and the SAELens inference architecture each is written as.
EXPORTED = {ReLUSAE: "standard", TopKSAE: "topk", BatchTopKSAE: "jumprelu", JumpReLUSAE: "jumprelu"}


def to_saelens(sae: SAE, metadata: dict) -> tuple[dict, dict[str, Tensor]]:
    """(cfg.json contents, state dict) of ``sae`` as a SAELens inference SAE on raw activations."""
    architecture = EXPORTED.get(type(sae))
    if architecture is None:
        raise UserError(
            f"{type(sae).__name__} is contextual (its code at a position depends on earlier positions) and SAELens's "
            f"per-token architectures cannot express it: export a relu, topk, batchtopk or jumprelu run"
        )
    s = float(sae.act_scale)
    tensors = {
        "W_enc": sae.W_enc.detach() * s,
        "b_enc": sae.b_enc.detach().clone(),
        "W_dec": sae.W_dec.detach() / s,
        "b_dec": sae.b_dec.detach() / s,
    }
    cfg = {
        "architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None,
                     "ctxsae_act_scale_folded": s, **metadata},
    }
    if architecture == "topk":
        cfg |= {"k": sae.cfg.k, "rescale_acts_by_decoder_norm": False}
    elif isinstance(sae, BatchTopKSAE):
        tensors["threshold"] = sae.threshold.detach().expand(sae.d_sae).clone()
    elif isinstance(sae, JumpReLUSAE):
        tensors["threshold"] = sae.threshold.detach().clone()
    return cfg, {k: v.float().contiguous().cpu() for k, v in tensors.items()}


def write_saelens(sae: SAE, folder: str | Path, metadata: dict) -> Path:
    """Write ``sae`` into ``folder`` as SAELens's ``load_from_disk`` reads it; files renamed into place."""
    from safetensors.torch import save_file

    cfg, tensors = to_saelens(sae, metadata)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / (WEIGHTS_FILE + ".tmp")))
    (folder / (CFG_FILE + ".tmp")).write_text(json.dumps(cfg, indent=1))
    for name in (WEIGHTS_FILE, CFG_FILE):
        (folder / (name + ".tmp")).replace(folder / name)
    return folder


def read_saelens(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(our model config, our state dict) of the SAELens SAE in ``folder``, on raw activations (act_scale 1)."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / CFG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise UserError(f"no SAELens SAE in {folder}: pass a folder with {CFG_FILE} and {WEIGHTS_FILE} (SAE.save_model writes one)")
    cfg = json.loads((folder / CFG_FILE).read_text())
    w = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    architecture = cfg.get("architecture", "standard")
    if cfg.get("normalize_activations", "none") != "none" or cfg.get("reshape_activations", "none") != "none":
        raise UserError(
            f"{folder}: SAELens SAEs with normalize_activations={cfg.get('normalize_activations')!r} or "
            f"reshape_activations={cfg.get('reshape_activations')!r} transform each input at run time; only 'none' "
            "can be read (fold the scaling factor first: sae.fold_activation_norm_scaling_factor, then save_model)"
        )
    if cfg.get("rescale_acts_by_decoder_norm"):  # TopK on pre * |W_dec_i|, decoded with unit rows: fold the norms
        norm_F = w["W_dec"].norm(dim=1).clamp_min(1e-8)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norm_F, w["b_enc"] * norm_F, w["W_dec"] / norm_F[:, None]
    if not cfg.get("apply_b_dec_to_input", True):  # x W_enc + b_enc = (x - b_dec) W_enc + (b_enc + b_dec W_enc)
        w["b_enc"] = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    config = our_config(architecture, cfg["d_in"], cfg["d_sae"], cfg.get("k"), folder)
    state = {k: w[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")} | {"act_scale": torch.ones(())}
    if architecture == "jumprelu":
        # theta <= 0 lets every positive pre-activation through, as ReLU does; the smallest float stands in for it.
        state["log_threshold"] = w["threshold"].clamp_min(torch.finfo(torch.float32).tiny).log()
    return config, state


def our_config(architecture: str, d_in: int, d_sae: int, k: int | None, folder: Path) -> dict:
    """The model config (``_target_`` + fields) of our class for a SAELens architecture; other fields keep our defaults."""
    if architecture == "standard":
        return asdict(ReLUConfig(d_in=d_in, d_sae=d_sae))
    if architecture == "topk":
        return asdict(TopKConfig(d_in=d_in, d_sae=d_sae, k=k))
    if architecture == "jumprelu":
        return asdict(JumpReLUConfig(d_in=d_in, d_sae=d_sae))  # threshold_init: overwritten by the weights
    raise UserError(f"{folder}: SAELens architecture '{architecture}' has no counterpart here: standard, topk and jumprelu can be read")
