"""What holding codes could save: a persistence oracle for per-token SAEs, and a dictionary-free bound.

**Persistence oracle** (:class:`PersistenceOracle`, per-token SAEs only: their codes are what a
hold scheme would transmit). Over the kept positions of the evaluation windows:

* ``already_active``: share of the codes active at t that were active at t - 1 too (same
  document, t - 1 kept);
* a perfect *hold* scheme keeps every latent at the value it last sent and sends a latent at t
  only when the code differs from the held value by more than ``tolerance`` times the held
  value (a new code, held 0, is always sent; a code that stops is a change of 100% and is sent as
  a 0). Held values are reset to 0 wherever a stretch starts (document start, or a position after
  one that is not kept). ``l0_held_<tol>`` = latents sent per position, and ``held_share_<tol>``
  = that over the SAE's own L0: the share of codes a hold-based contextual SAE with this
  dictionary would still have to pay for; ``fvu_held_<tol>`` = FVU of the SAE's decoder applied
  to the held values (what the receiver reconstructs);
* the same with stops free (a scheme whose held values end by themselves, as the recurrent SAE's
  decay and drop rule do, at best exactly when the code stops): ``l0_changed_<tol>`` = codes active
  at t that are new or changed by more than ``tolerance`` of the held value, ``changed_share_<tol>``
  = that over the SAE's L0 (at most 1, and at least 1 - ``already_active``). Its reconstruction
  is the hold scheme's (``fvu_held_<tol>``): a stop ends the held value either way.

**Region-mean bound** (:class:`RegionMeanBound`, any activations, no dictionary): the share of
activation variance explained by the causal running mean of the current region, i.e. predicting
x_t by the mean of the kept positions of its region before t (the dataset mean at the region's
first position). Regions: ``document`` (a continued stretch: document start or window start),
and where labels exist ``block`` and ``language`` (runs of one block / one language within a
stretch). This is what a perfect region code could carry, whatever the dictionary.

It overstates what a region code can add to an SAE: much of the region mean is already in what
the SAE's codes reconstruct (a token latent's direction carries its region's offset along). So
the same predictor is also applied to the SAE's own residual e = x - x_hat:
``residual_explained_<region>`` = (sum |e_t|^2 - sum |e_t - ebar_t|^2) / sum |x_t - xbar|^2 with
ebar_t the causal running mean of e over t's region (0 at its first position): the FVU a
decoder would take off this SAE's if it added, for free, the running mean of its own past errors.

Both report, where labels exist, the same figures at the positions of each block kind
(``by_kind``); FVU and explained variance there are relative to those positions' variance about
their own mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ctxsae.cache.dataset import Windows
from ctxsae.metrics.reconstruction import Reconstruction
from ctxsae.metrics.regions import label_runs
from ctxsae.metrics.temporal import continuation_mask
from ctxsae.models.base import SAEOutput


def held_codes(codes_BTF: Tensor, cont_BT: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """The held values [B, T, F] a perfect hold scheme reconstructs from, and where it sends [B, T, F].

    Sequential over T (each position's held value depends on what was sent before).
    """
    held = torch.zeros_like(codes_BTF[:, 0])
    held_BTF, sent_BTF = torch.empty_like(codes_BTF), torch.empty_like(codes_BTF, dtype=torch.bool)
    for t in range(codes_BTF.shape[1]):
        held = torch.where(cont_BT[:, t, None], held, 0.0)
        z = codes_BTF[:, t]
        sent = (z - held).abs() > tolerance * held.abs()
        held = torch.where(sent, z, held)
        held_BTF[:, t], sent_BTF[:, t] = held, sent
    return held_BTF, sent_BTF


class _Counts:
    def __init__(self, tolerances: Sequence[float], d_in: int):
        self.positions = self.active = self.already = 0
        self.sent = dict.fromkeys(tolerances, 0)
        self.changed = dict.fromkeys(tolerances, 0)
        self.held = {tol: Reconstruction(d_in, sync_on_compute=False) for tol in tolerances}

    def compute(self) -> dict:
        l0 = self.active / max(self.positions, 1)
        out = {"positions": self.positions, "l0": l0, "already_active": self.already / max(self.active, 1)}
        for tol, sent in self.sent.items():
            out[f"l0_held_{tol:g}"] = sent / max(self.positions, 1)
            out[f"held_share_{tol:g}"] = sent / max(self.active, 1)
            out[f"fvu_held_{tol:g}"] = self.held[tol].compute()["fvu"]
        for tol, changed in self.changed.items():
            out[f"l0_changed_{tol:g}"] = changed / max(self.positions, 1)
            out[f"changed_share_{tol:g}"] = changed / max(self.active, 1)
        return out


class PersistenceOracle:
    """Accumulator (``update(batch, out)``, ``compute()``) of the oracle; ``decode``: the SAE's decoder."""

    def __init__(self, decode: Callable[[Tensor], Tensor], d_in: int, tolerances: Sequence[float] = (0.1, 0.3)):
        self.decode, self.d_in, self.tolerances = decode, d_in, tuple(tolerances)
        self.total = _Counts(self.tolerances, d_in)
        self.by_kind: dict[str, _Counts] = {}
        self.contextual = False

    @torch.no_grad()
    def update(self, batch: Windows, out: SAEOutput) -> None:
        if out.codes is not out.effective_codes:  # a contextual SAE's codes are not what it decodes
            self.contextual = True
            return
        mask, z = batch.mask_BT, out.codes
        cont = continuation_mask(batch.doc_start_BT, mask)
        active = z != 0
        before = torch.zeros_like(active)
        before[:, 1:] = active[:, :-1] & cont[:, 1:, None]
        groups = [(self.total, mask)]
        if batch.labels is not None:
            for k, name in enumerate(batch.labels.kinds):
                counts = self.by_kind.setdefault(name, _Counts(self.tolerances, self.d_in))
                groups.append((counts, mask & (batch.labels.kind_NT == k)))
        held = {tol: held_codes(z, cont, tol) for tol in self.tolerances}
        held_out = {tol: out._replace(reconstruction=self.decode(held_BTF)) for tol, (held_BTF, _) in held.items()}
        for counts, where in groups:
            counts.positions += int(where.sum())
            counts.active += int((active & where[..., None]).sum())
            counts.already += int((active & before & where[..., None]).sum())
            for tol, (held_BTF, sent_BTF) in held.items():
                counts.sent[tol] += int((sent_BTF & where[..., None]).sum())
                counts.changed[tol] += int((sent_BTF & active & where[..., None]).sum())
                counts.held[tol].update(batch._replace(mask_BT=where), held_out[tol])

    def compute(self) -> dict | None:
        if self.contextual:
            return None  # the oracle is defined for per-token SAEs
        return self.total.compute() | {"by_kind": {k: c.compute() for k, c in sorted(self.by_kind.items()) if c.positions}}


# -- the dictionary-free bound -------------------------------------------------------------------


class _Explained:
    """Streaming sums for 1 - sum |x - prediction|^2 / sum |x - mean x|^2 (the dataset mean where no history)."""

    def __init__(self):
        self.err = 0.0  # positions with history
        self.sum_x: Tensor | float = 0.0  # all positions, for the variance
        self.sq = 0.0
        self.n = 0
        self.first_sum: Tensor | float = 0.0  # positions without history: their error needs the final mean
        self.first_sq = 0.0
        self.first_n = 0

    def update(self, x_ND: Tensor, pred_ND: Tensor, history_N: Tensor) -> None:
        self.n += len(x_ND)
        self.sum_x = self.sum_x + x_ND.sum(0)
        self.sq += x_ND.pow(2).sum().item()
        self.err += (x_ND - pred_ND)[history_N].pow(2).sum().item()
        first = x_ND[~history_N]
        self.first_n += len(first)
        self.first_sum = self.first_sum + first.sum(0)
        self.first_sq += first.pow(2).sum().item()

    def variance(self) -> float:
        """sum |x - mean x|^2 over all positions seen."""
        mean = torch.as_tensor(self.sum_x, dtype=torch.float64) / max(self.n, 1)
        return self.sq - self.n * mean.pow(2).sum().item()

    def compute(self) -> float:
        mean = torch.as_tensor(self.sum_x, dtype=torch.float64) / max(self.n, 1)
        variance = self.variance()
        first_err = self.first_sq - 2 * (torch.as_tensor(self.first_sum) * mean).sum().item() + self.first_n * mean.pow(2).sum().item()
        return 1 - (self.err + first_err) / max(variance, 1e-12)


def causal_region_mean(x_BTD: Tensor, start_BT: Tensor, mask_BT: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the kept positions of each position's region before it [B, T, D], and whether there are any [B, T]."""
    w = mask_BT.to(x_BTD.dtype)[..., None]
    sum_before = (x_BTD * w).cumsum(1) - x_BTD * w  # kept positions before t, in the row
    n_before = w.cumsum(1) - w
    t = torch.arange(x_BTD.shape[1], device=x_BTD.device)
    region_start = torch.where(start_BT, t, 0).cummax(-1).values[..., None]  # [B, T, 1]
    sum_region = sum_before - sum_before.gather(1, region_start.expand_as(x_BTD))
    n_region = n_before - n_before.gather(1, region_start)
    return sum_region / n_region.clamp_min(1), n_region[..., 0] > 0


class RegionMeanBound:
    """Accumulator (``update(batch, out)``, ``compute()``) of the region-mean bound on x and, given ``out``, on
    the SAE's residual (the module docstring)."""

    def __init__(self):
        self.explained: dict[str, _Explained] = {}
        self.by_kind: dict[str, dict[str, _Explained]] = {}
        self.residual_sq = 0.0  # sum |e|^2 over kept positions
        self.residual_err: dict[str, float] = {}  # sum |e - ebar|^2 per region

    @torch.no_grad()
    def update(self, batch: Windows, out: SAEOutput | None = None) -> None:
        mask, x = batch.mask_BT, batch.x_BTD.double()
        cont = continuation_mask(batch.doc_start_BT, mask)
        starts = {"document": ~cont}
        if batch.labels is not None:
            starts |= {"block": label_runs(batch.labels.block_NT, cont).start_BT,
                       "language": label_runs(batch.labels.language_NT, cont).start_BT}
        e = None if out is None else x - out.reconstruction.double()
        if e is not None:
            self.residual_sq += e[mask].pow(2).sum().item()
        for region, start in starts.items():
            pred, history = causal_region_mean(x, start, mask)
            self.explained.setdefault(region, _Explained()).update(x[mask], pred[mask], history[mask])
            if e is not None:
                e_pred, _ = causal_region_mean(e, start, mask)  # 0 where there is no history
                self.residual_err[region] = self.residual_err.get(region, 0.0) + (e - e_pred)[mask].pow(2).sum().item()
            if batch.labels is None:
                continue
            for k, name in enumerate(batch.labels.kinds):
                where = mask & (batch.labels.kind_NT == k)
                if bool(where.any()):
                    self.by_kind.setdefault(region, {}).setdefault(name, _Explained()).update(x[where], pred[where], history[where])

    def compute(self) -> dict:
        out = {f"explained_{region}": e.compute() for region, e in self.explained.items()}
        if self.residual_err:
            variance = self.explained["document"].variance()
            out |= {f"residual_explained_{region}": (self.residual_sq - err) / max(variance, 1e-12)
                    for region, err in self.residual_err.items()}
        if self.by_kind:
            out["by_kind"] = {region: {k: e.compute() for k, e in sorted(kinds.items())} for region, kinds in self.by_kind.items()}
        return out
