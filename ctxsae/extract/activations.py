"""LM activations at a hook, extracted with nnsight and stopped right after the hook layer.

``LMActivations`` is the activation source behind every text dataset: it tokenises the text
into windows, draws ``draw_windows`` of them (seeded, across the whole corpus so every language
is represented), and yields their activations chunk by chunk to the cache. The LM and the text
are only loaded when the cache actually needs filling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ctxsae.data.source import ActivationChunk
from ctxsae.data.windows import make_windows
from ctxsae.errors import UserError
from ctxsae.extract.lm import LoadedLM, resolve_device, resolve_dtype
from ctxsae.ranges import at_least

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
    layer: int = field(default=8, metadata=at_least(0))  # decoder block index of the hook
    layers: list[int] | None = None  # extract.py only: fill the caches of these layers in one pass (each as lm.layer=L)
    site: str = "resid_post"  # resid_post (block output) | attn_out | mlp_out
    batch_windows: int = field(default=8, metadata=at_least(1))  # windows per LM forward pass during extraction


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


def check_positions(loaded: LoadedLM, n_ctx: int) -> None:
    """Windows longer than the LM's position limit would run off its position embeddings."""
    config = loaded.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and n_ctx > limit:
        raise UserError(f"data.n_ctx={n_ctx} is longer than {loaded.name}'s position limit of {limit} tokens: lower data.n_ctx")


def set_output(envoy: Any, value: torch.Tensor) -> None:
    """Replace a module's output in an nnsight trace; the hidden state leads a tuple output if any."""
    output = envoy.output
    envoy.output = (value, *output[1:]) if isinstance(output, tuple) else value


class Extractor:
    """Runs the LM on token windows via nnsight and stops the forward pass after the (deepest) hook.

    ``layer`` may be several layers: one forward then saves the hook at each (``at_layers``).
    """

    def __init__(self, loaded: LoadedLM, layer: int | Sequence[int], site: str):
        from nnsight import NNsight

        self.loaded = loaded
        # Token ids go straight to the model: tokenisation happened upstream, once, for the cache.
        self.lm = NNsight(loaded.model)
        self.layers = [layer] if isinstance(layer, int) else sorted(set(layer))  # nnsight: in forward order
        self.envoys = [hook_envoy(self.lm, loaded.model, layer, site) for layer in self.layers]
        self.device = next(loaded.model.parameters()).device

    @torch.inference_mode()
    def at_layers(self, tokens_NT: torch.Tensor) -> dict[int, torch.Tensor]:
        """Activations [N, T, d_model] at each hook layer, from one forward pass."""
        saved = []
        with self.lm.trace(tokens_NT.to(self.device)) as tracer:
            for envoy in self.envoys:  # a plain loop: nnsight runs the trace body in its own frame
                saved.append(first(envoy.output).save())
            tracer.stop()  # nothing after the deepest hook is computed
        return {layer: acts.float().cpu() for layer, acts in zip(self.layers, saved)}

    def __call__(self, tokens_NT: torch.Tensor) -> torch.Tensor:
        """Activations at the deepest hook (the only one for a single layer)."""
        return self.at_layers(tokens_NT)[self.layers[-1]]

    @property
    def envoy(self) -> Any:
        """The deepest hook's envoy (the splice point of downstream evaluation)."""
        return self.envoys[-1]

    @torch.no_grad()
    def logits(self, ids_BT: torch.Tensor, patch: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, T, V] of the whole LM with ``patch(activation at the deepest hook)`` written back (None: clean)."""
        with self.lm.trace(ids_BT):
            if patch is not None:
                set_output(self.envoy, patch(first(self.envoy.output)))
            logits = self.lm.output.logits.save()
        return logits

    @property
    def d_model(self) -> int:
        return self.loaded.model.config.hidden_size


class LMActivations:
    """ActivationSource: windows of a text source run through an LM up to the hook at ``lm.layer``.

    Also a JointSource over ``layers`` (default: ``lm.layer`` alone): ``parts`` are the hooks at
    each layer, keyed exactly as this class at ``lm.layer=L``, filled by one forward per batch.
    """

    def __init__(self, text: Any, lm: LMConfig, n_ctx: int, draw_windows: int, seed: int, layers: Sequence[int] | None = None):
        self.text, self.lm_cfg, self.n_ctx, self.draw_windows, self.seed = text, lm, n_ctx, draw_windows, seed
        self.layers = sorted(set(layers)) if layers else [lm.layer]

    def fingerprint(self, layer: int | None = None) -> dict:
        loader = OmegaConf.to_container(self.lm_cfg.loader, resolve=True) if OmegaConf.is_config(self.lm_cfg.loader) else dict(self.lm_cfg.loader)
        if "device" in loader:  # the cache is keyed by what ran: "auto" on a CPU is the float32 CPU cache of before
            loader["dtype"] = resolve_dtype(loader.get("dtype", "auto"), loader["device"])
            loader["device"] = resolve_device(loader["device"])
        return {
            "kind": "lm_activations",
            "lm": loader,
            "layer": self.lm_cfg.layer if layer is None else layer,
            "site": self.lm_cfg.site,
            "text": self.text.fingerprint(),
            "n_ctx": self.n_ctx,
            "max_windows": self.draw_windows,  # the key predates the field's name: existing caches stay valid
            "seed": self.seed,
        }

    @cached_property
    def extractor(self) -> Extractor:
        return Extractor(instantiate(self.lm_cfg.loader), self.layers, self.lm_cfg.site)

    @property
    def parts(self) -> list[LayerActivations]:
        return [LayerActivations(self, layer) for layer in self.layers]

    @property
    def d_in(self) -> int:
        return self.extractor.d_model

    @cached_property
    def windows(self):
        check_positions(self.extractor.loaded, self.n_ctx)
        tok = self.extractor.loaded.tokenizer
        sep = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        windows = make_windows(self.text.documents(), tok, self.n_ctx, doc_separator_id=sep)
        n = len(windows.tokens_NT)
        if self.draw_windows and n > self.draw_windows:
            # Draw windows from the whole corpus (not its first files) so every language is represented.
            g = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n, generator=g)[: self.draw_windows].sort().values
            windows = windows.select(keep)
        return windows

    def n_windows(self) -> int:
        return len(self.windows.tokens_NT)

    def joint_chunks(self, start: int, chunk_windows: int) -> Iterator[list[ActivationChunk]]:
        """Chunks of the hooks at every layer of ``layers``, in that order, one forward pass per LM batch."""
        tokens, doc_start, labels = self.windows.tokens_NT, self.windows.doc_start_NT, self.windows.labels
        step = self.lm_cfg.batch_windows
        for lo in range(start, len(tokens), chunk_windows):
            hi = min(lo + chunk_windows, len(tokens))
            batches = [self.extractor.at_layers(tokens[i : min(i + step, hi)].long()) for i in range(lo, hi, step)]
            rest = (tokens[lo:hi].int(), doc_start[lo:hi].bool(), None if labels is None else labels.select(slice(lo, hi)))
            yield [ActivationChunk(torch.cat([b[layer] for b in batches]), *rest) for layer in self.layers]

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        return LayerActivations(self, self.lm_cfg.layer).chunks(start, chunk_windows)


class LayerActivations:
    """One part of a multi-layer LMActivations: the cache key and sizes of the hook at ``layer``."""

    def __init__(self, joint: LMActivations, layer: int):
        self.joint, self.layer = joint, layer
        self.n_ctx = joint.n_ctx

    @property
    def d_in(self) -> int:
        return self.joint.d_in

    def fingerprint(self) -> dict:
        return self.joint.fingerprint(self.layer)

    def n_windows(self) -> int:
        return self.joint.n_windows()

    def chunks(self, start: int, chunk_windows: int) -> Iterator[ActivationChunk]:
        at = self.joint.layers.index(self.layer)
        return (chunks[at] for chunks in self.joint.joint_chunks(start, chunk_windows))
