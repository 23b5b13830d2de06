"""The language-switch probe: two-language windows through the LM and the SAE, and the best switch latent."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ctxsae.data.text import language_switch_windows
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig
from ctxsae.metrics.language import SwitchWindows, switch_probe, switch_windows, with_controls
from ctxsae.models.base import SAE, window_starts


class ProbeCodes(NamedTuple):
    windows: SwitchWindows  # the probe's windows (switch and control)
    codes_NTF: torch.Tensor  # the SAE's novel codes on them (CPU)
    effective_NTF: torch.Tensor  # ... and its effective codes


@torch.no_grad()
def probe_codes(sae: SAE, extractor, tokens_NT: torch.Tensor, batch_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(sae.parameters()).device
    codes, effective = [], []
    for ids in tokens_NT.split(batch_windows):
        x = sae.normalize(extractor(ids).to(device))
        out = sae(x, window_starts(*ids.shape, device=device))  # one document: the SAE sees language A before the switch
        codes.append(out.codes.cpu())
        effective.append(out.effective_codes.cpu())
    return torch.cat(codes), torch.cat(effective)


def language_switch(sae: SAE, cfg: EvalConfig, extractor, n_ctx: int) -> tuple[dict, ProbeCodes]:
    """The probe's figures, and the windows and codes behind them (for heatmaps and the browser)."""
    p = cfg.probe
    texts = language_switch_windows(p.root, p.pairs, math.ceil(p.n_windows / len(p.pairs)), p.seed, p.joiner)
    sw = switch_windows(with_controls(texts, p.joiner), extractor.loaded.tokenizer, n_ctx)
    n_switch = int((~sw.control_N).sum())
    if n_switch < 4 or n_switch == len(sw.control_N):
        raise UserError(f"language-switch probe: only {n_switch} usable switch window(s): raise probe.n_windows or data.n_ctx")
    codes, effective = probe_codes(sae, extractor, sw.tokens_NT, cfg.batch_windows)
    return switch_probe(codes, effective, sw), ProbeCodes(sw, codes, effective)
