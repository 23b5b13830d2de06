"""LM activations at a hook, extracted with nnsight and stopped right after the hook layer.

``LMActivations`` is the activation source behind every text dataset: it tokenises the text
into windows, draws ``max_windows`` of them (seeded, across the whole corpus so every language
is represented), and yields their activations chunk by chunk to the cache. The LM and the text
are only loaded when the cache actually needs filling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ctxsae.cache.source import ActivationChunk
from ctxsae.data.windows import make_windows
from ctxsae.errors import UserError
from ctxsae.extract.lm import LoadedLM, resolve_device, resolve_dtype

# Where the decoder blocks live, and what their attention / MLP submodules are called.
LAYOUTS = {
    "llama": ("model.layers", "self_attn", "mlp"),  # Llama, Mistral, Qwen, SmolLM
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),  # Pythia
}
SITES = ("resid_post", "attn_out", "mlp_out")


@dataclass
class LMConfig:
    loader: Any = None  # _target_ node returning a LoadedLM (ctxsae.extract.lm.load_*)
    layer: int = 8  # decoder block index of the hook
    site: str = "resid_post"  # resid_post (block output) | attn_out | mlp_out
    batch_windows: int = 8  # windows per LM forward pass during extraction


def get_attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def layout_of(model: torch.nn.Module) -> tuple[str, str, str]:
    for blocks, attn, mlp in LAYOUTS.values():
        try:
            get_attr(model, blocks)
        except AttributeError:
            continue
        return blocks, attn, mlp
    raise UserError(f"unknown LM layout {type(model).__name__}: supported are {', '.join(LAYOUTS)} (add it to ctxsae.extract.activations.LAYOUTS)")


def hook_envoy(lm: Any, model: torch.nn.Module, layer: int, site: str) -> Any:
    """The nnsight envoy of the module whose output is the activation at (layer, site)."""
    blocks, attn, mlp = layout_of(model)
    n_layers = len(get_attr(model, blocks))
    if not 0 <= layer < n_layers:
        raise UserError(f"hook layer {layer} is out of range: this LM has layers 0..{n_layers - 1} (set lm.layer)")
    if site not in SITES:
        raise UserError(f"unknown hook site '{site}': choose lm.site from {', '.join(SITES)}")
    block = get_attr(lm, blocks)[layer]
    return {"resid_post": block, "attn_out": get_attr(block, attn), "mlp_out": get_attr(block, mlp)}[site]


def first(output: Any) -> torch.Tensor:
    """Blocks and attention modules return a tuple in some architectures; the hidden state comes first."""
    return output[0] if isinstance(output, tuple) else output


class Extractor:
    """Runs the LM on token windows via nnsight and stops the forward pass after the hook."""

    def __init__(self, loaded: LoadedLM, layer: int, site: str):
        from nnsight import NNsight

        self.loaded = loaded
        # Token ids go straight to the model: tokenisation happened upstream, once, for the cache.
        self.lm = NNsight(loaded.model)
        self.envoy = hook_envoy(self.lm, loaded.model, layer, site)
        self.device = next(loaded.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, tokens_NT: torch.Tensor) -> torch.Tensor:
        with self.lm.trace(tokens_NT.to(self.device)) as tracer:
            acts = first(self.envoy.output).save()
            tracer.stop()  # nothing after the hook is computed
        return acts.float().cpu()

    @property
    def d_model(self) -> int:
        return self.loaded.model.config.hidden_size


class LMActivations:
    """ActivationSource: windows of a text source run through an LM up to the hook."""

    def __init__(self, text: Any, lm: LMConfig, n_ctx: int, max_windows: int, seed: int):
        self.text, self.lm_cfg, self.n_ctx, self.max_windows, self.seed = text, lm, n_ctx, max_windows, seed

    def fingerprint(self) -> dict:
        loader = OmegaConf.to_container(self.lm_cfg.loader, resolve=True) if OmegaConf.is_config(self.lm_cfg.loader) else dict(self.lm_cfg.loader)
        if "device" in loader:  # the cache is keyed by what ran: "auto" on a CPU is the float32 CPU cache of before
            loader["dtype"] = resolve_dtype(loader.get("dtype", "auto"), loader["device"])
            loader["device"] = resolve_device(loader["device"])
        return {
            "kind": "lm_activations",
            "lm": loader,
            "layer": self.lm_cfg.layer,
            "site": self.lm_cfg.site,
            "text": self.text.fingerprint(),
            "n_ctx": self.n_ctx,
            "max_windows": self.max_windows,
            "seed": self.seed,
        }

    @cached_property
    def extractor(self) -> Extractor:
        return Extractor(instantiate(self.lm_cfg.loader), self.lm_cfg.layer, self.lm_cfg.site)

    @property
    def d_in(self) -> int:
        return self.extractor.d_model

    @cached_property
    def windows(self):
        tok = self.extractor.loaded.tokenizer
        sep = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        windows = make_windows((d.text for d in self.text.documents()), tok, self.n_ctx, doc_separator_id=sep)
        n = len(windows.tokens_NT)
        if self.max_windows and n > self.max_windows:
            # Draw windows from the whole corpus (not its first files) so every language is represented.
            g = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n, generator=g)[: self.max_windows].sort().values
            windows = type(windows)(*(torch.as_tensor(t)[keep] for t in windows))
        return windows

    def n_windows(self) -> int:
        return len(self.windows.tokens_NT)

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        tokens, doc_start = torch.as_tensor(self.windows.tokens_NT), torch.as_tensor(self.windows.doc_start_NT)
        step = self.lm_cfg.batch_windows
        for lo in range(start, len(tokens), chunk_windows):
            hi = min(lo + chunk_windows, len(tokens))
            x = torch.cat([self.extractor(tokens[i : min(i + step, hi)].long()) for i in range(lo, hi, step)])
            yield ActivationChunk(x, tokens[lo:hi].int(), doc_start[lo:hi].bool())
