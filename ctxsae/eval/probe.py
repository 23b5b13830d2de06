"""The language-switch probe: two-language windows through the LM and the SAE, and the best switch latent."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ctxsae.data.debian_reference import parallel_switch_texts
from ctxsae.data.text import SwitchText, language_switch_windows, segment_switch_texts
from ctxsae.data.windows import context_starts
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig, ProbeConfig
from ctxsae.eval.stages import UNSEEN, Stage
from ctxsae.metrics.language import SwitchWindows, switch_probe, switch_windows, with_controls
from ctxsae.models.base import SAE, window_starts


class ProbeCodes(NamedTuple):
    windows: SwitchWindows  # the probe's windows (switch and control)
    codes_NTF: torch.Tensor  # the SAE's novel codes on them (CPU)
    effective_NTF: torch.Tensor  # ... and its effective codes


@torch.no_grad()
def probe_codes(sae: SAE, extractor, windows: SwitchWindows, batch_windows: int,
                stage: Stage = UNSEEN) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(sae.parameters()).device
    codes, effective = [], []
    # One document a window (the SAE sees language A before the switch), its context starting after the BOS.
    starts_NT = context_starts(window_starts(*windows.tokens_NT.shape), windows.valid_NT)
    for ids, starts in zip(windows.tokens_NT.split(batch_windows), starts_NT.split(batch_windows)):
        x = sae.normalize(extractor(ids).to(device))
        out = sae(x, starts.to(device))
        codes.append(out.codes.cpu())
        effective.append(out.effective_codes.cpu())
        stage.advance(len(ids))
    return torch.cat(codes), torch.cat(effective)


def probe_texts(p: ProbeConfig) -> tuple[list[SwitchText], str]:
    """The probe's switch texts from ``p.source``, and the joiner its control windows use."""
    n_per_pair = math.ceil(p.n_windows / len(p.pairs))
    if p.source == "fortunes":
        return language_switch_windows(p.root, p.pairs, n_per_pair, p.seed, p.joiner), p.joiner
    if p.source == "debian_reference":
        return parallel_switch_texts(p.pairs, n_per_pair, p.seed, p.book_root, p.joiner), p.joiner
    if p.source == "segments" and p.segments:
        return segment_switch_texts(p.segments), ""  # the user's segments meet without a joiner
    raise UserError(f"probe.source={p.source!r}: choose fortunes, debian_reference, or segments with probe.segments=<file.jsonl>")


def language_switch(sae: SAE, cfg: EvalConfig, extractor, n_ctx: int, stage: Stage = UNSEEN) -> tuple[dict, ProbeCodes]:
    """The probe's figures, and the windows and codes behind them (for heatmaps and the browser); its windows
    counted on ``stage``."""
    texts, joiner = probe_texts(cfg.probe)
    sw = switch_windows(with_controls(texts, joiner), extractor.loaded.tokenizer, n_ctx)
    n_switch = int((~sw.control_N).sum())
    if n_switch < 4 or n_switch == len(sw.control_N):
        raise UserError(f"language-switch probe: only {n_switch} usable switch window(s): raise probe.n_windows or data.n_ctx")
    stage.expect(len(sw.tokens_NT))  # switch and control windows: known once the texts are tokenised
    codes, effective = probe_codes(sae, extractor, sw, cfg.batch_windows, stage)
    return switch_probe(codes, effective, sw), ProbeCodes(sw, codes, effective)
