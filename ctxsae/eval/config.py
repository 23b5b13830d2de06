"""What ``python evaluate.py`` reads: the structured config (Hydra checks overrides against it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctxsae.data.debian_reference import DEBIAN_REFERENCE_ROOT
from ctxsae.data.text import DEFAULT_SWITCH_PAIRS, FORTUNES_ROOT
from ctxsae.errors import UserError
from ctxsae.metrics import MetricsConfig
from ctxsae.ranges import at_least


@dataclass
class ProbeConfig:
    n_windows: int = field(default=64, metadata=at_least(0))  # stitched two-language windows (0: no probe)
    # fortunes: two entries stitched | debian_reference: a chapter continued in the other language at a block
    # boundary (parallel text) | segments: the label changes of a user's JSONL of labelled segments
    source: str = "fortunes"
    root: str = FORTUNES_ROOT  # the fortunes install the two-language texts come from
    book_root: str = DEBIAN_REFERENCE_ROOT  # the Debian Reference install (source=debian_reference)
    segments: str | None = None  # the JSONL path (source=segments): [{"text": ..., "label": ...}, ...] per line
    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_SWITCH_PAIRS))  # "a-b": a fortune in a, then one in b
    joiner: str = "\n\n"  # between the two fortunes (also in the same-language control windows)
    seed: int = 0  # which fortunes are stitched


@dataclass
class EvalConfig:
    run: str = "???"  # a run directory (config.yaml + sae.safetensors), or the sae.safetensors inside one
    device: str = "auto"  # auto (cuda if available) | cpu | cuda[:i]
    batch_windows: int = field(default=8, metadata=at_least(1))  # windows per SAE / LM forward pass
    held_out_windows: int = field(default=0, metadata=at_least(0))  # evaluate the first N held-out windows (0: the whole val split)
    downstream: bool = True  # splice the reconstruction into the LM (text data only)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # dense threshold, region gap and length
    heatmap_windows: int = field(default=2, metadata=at_least(0))  # held-out windows drawn as latent heatmaps (plus one probe window)
    heatmap_latents: int = field(default=8, metadata=at_least(1))  # latents per heatmap
    tensorboard: bool = True  # log figures, histograms and hparams under <run>/tb
    report: str = "none"  # none | html: also write the feature browser (ctxsae.browse) into <run>/browse/
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.report not in ("none", "html"):
            raise UserError(f"report={self.report}: choose report=none or report=html (the feature browser)")


def register_eval_config() -> None:
    """The eval schema in Hydra's ConfigStore, so a typo in an override fails at start-up."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)
