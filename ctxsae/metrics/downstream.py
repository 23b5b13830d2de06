"""Does the LM still work on the SAE's reconstruction? The splice test.

The LM runs on the evaluation windows four times, with the activation at the hook replaced (via
nnsight) at every kept position at once:

    clean      the LM as it is
    spliced    the SAE's reconstruction, denormalised to the LM's units (``sae.denormalize``)
    zero       zero ablation: the hook's output set to 0
    mean       mean ablation: the mean activation of the evaluation set at every position

Replacing every position at once is legitimate because every SAE here is causal: the code at t
never reads later activations. The masked positions (the attention sink at each window start)
keep their clean activation in every condition, and next-token losses are averaged over the
kept positions that have a next token, in every condition alike.

    ce_recovered_zero = (CE_zero - CE_spliced) / (CE_zero - CE_clean)     1: as good as clean, 0: as bad as zeroing
    ce_recovered_mean = (CE_mean - CE_spliced) / (CE_mean - CE_clean)     the same against the (harder) mean baseline
    kl_spliced        = mean KL(p_clean || p_spliced) of the next-token distributions

The zero and mean conditions do not depend on the SAE, so a sweep computes them once:
``Downstream(SPLICE_ONLY)`` runs only clean + spliced, and ``compute(baseline)`` takes the ablation
sums (``sums(ABLATIONS)``) of an earlier pass over the same windows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.models.base import SAE

CONDITIONS = ("clean", "spliced", "zero", "mean")
ABLATIONS = ("zero", "mean")  # SAE-independent: shareable across the runs of one cache
SPLICE_ONLY = ("clean", "spliced")  # clean is needed beside the splice for the KL

#: The LM's logits [B, T, V] on token ids [B, T], with ``patch(hook activation)`` written back at the hook
#: (``patch`` None: the clean LM); ``ctxsae.extract.activations.Extractor.logits``.
PatchedLogits = Callable[[Tensor, Callable[[Tensor], Tensor] | None], Tensor]


def next_token_logprobs(logits_BTV: Tensor) -> Tensor:
    """log p(. | tokens <= t) [B, T-1, V] at the positions that have a next token."""
    return F.log_softmax(logits_BTV[:, :-1].float(), dim=-1)


class Downstream:
    """Streaming sums of CE per condition and KL(clean || condition) over the scored positions.

    Unlike the SAE accumulators it runs the LM itself (``update(batch)``: one LM pass per condition
    on the batch's tokens), since the splice must see the LM's own activations at the hook.
    """

    def __init__(self, logits: PatchedLogits, sae: SAE, mean_act_D: Tensor, conditions: tuple[str, ...] = CONDITIONS):
        assert conditions[0] == "clean", "the clean run comes first: every KL is measured against it"
        self.logits, self.sae, self.mean_act_D = logits, sae, mean_act_D
        self.conditions, self.n = conditions, 0
        self.ce = dict.fromkeys(conditions, 0.0)
        self.kl = dict.fromkeys(conditions[1:], 0.0)

    @torch.no_grad()
    def update(self, batch: Windows) -> None:
        """One batch of windows (token ids, document starts, kept positions) on the LM's device."""
        sae, mask_BT, start_BT = self.sae, batch.mask_BT, batch.context_start_BT
        ids_BT = batch.tokens_BT.long()
        keep = mask_BT[..., None]

        def spliced(h: Tensor) -> Tensor:
            recon = sae.denormalize(sae(sae.normalize(h.float()), start_BT).reconstruction).to(h.dtype)
            return torch.where(keep, recon, h)

        patches = {
            "clean": None,
            "spliced": spliced,
            "zero": lambda h: torch.where(keep, torch.zeros_like(h), h),
            "mean": lambda h: torch.where(keep, self.mean_act_D.to(h.dtype), h),
        }
        patches = {name: patches[name] for name in self.conditions}
        scored = mask_BT[:, :-1]  # kept positions that predict a next token
        target = ids_BT[:, 1:, None]
        self.n += int(scored.sum())
        clean_lp = None
        for name, patch in patches.items():
            lp = next_token_logprobs(self.logits(ids_BT, patch))
            self.ce[name] += -(lp.gather(-1, target).squeeze(-1) * scored).sum().item()
            if clean_lp is None:
                clean_lp = lp
            else:
                kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)
                self.kl[name] += (kl * scored).sum().item()
            del lp
    def sums(self, conditions: tuple[str, ...]) -> dict:
        """The raw sums of some conditions (JSON-able), to stand in for them in a later ``compute``."""
        return {"n": self.n, "ce": {k: self.ce[k] for k in conditions}, "kl": {k: self.kl[k] for k in conditions}}

    def compute(self, baseline: dict | None = None) -> dict[str, float]:
        """Every figure; conditions this pass did not run come from ``baseline`` (same windows, same n)."""
        ce_sums, kl_sums = dict(self.ce), dict(self.kl)
        if baseline is not None:
            if baseline["n"] != self.n:
                raise ValueError(f"baseline sums cover {baseline['n']} positions, this pass {self.n}: not the same windows")
            ce_sums |= {k: v for k, v in baseline["ce"].items() if k not in self.ce}
            kl_sums |= {k: v for k, v in baseline["kl"].items() if k not in self.kl}
        n = max(self.n, 1)
        ce = {k: v / n for k, v in ce_sums.items()}
        return {
            **{f"ce_{k}": v for k, v in ce.items()},
            "ce_recovered_zero": ce_recovered(ce["zero"], ce["spliced"], ce["clean"]),
            "ce_recovered_mean": ce_recovered(ce["mean"], ce["spliced"], ce["clean"]),
            **{f"kl_{k}": v / n for k, v in kl_sums.items()},
            "n_tokens": self.n,
        }


def ce_recovered(ce_ablated: float, ce_spliced: float, ce_clean: float) -> float:
    """Share of the CE gap between an ablation and the clean LM that the splice closes."""
    gap = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / gap if abs(gap) > 1e-12 else float("nan")
