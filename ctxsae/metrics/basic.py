"""Reconstruction and sparsity figures over the masked positions of a batch of windows."""

from __future__ import annotations

from torch import Tensor


def fvu(x_BTD: Tensor, recon_BTD: Tensor, mask_BT: Tensor | None = None) -> Tensor:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over kept positions."""
    x, r = _flat(x_BTD, mask_BT), _flat(recon_BTD, mask_BT)
    return (x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def l0(codes_BTF: Tensor, mask_BT: Tensor | None = None) -> Tensor:
    """Mean number of non-zero codes per kept position.

    The mask weights the counts rather than selecting rows: boolean indexing would copy the codes and
    make the host wait for the device (the training step logs this every step). The counts are
    integers, so the mean is the one over the selected rows exactly.
    """
    count_BT = (codes_BTF != 0).sum(-1)
    if mask_BT is None:
        return count_BT.float().mean()
    return ((count_BT * mask_BT).sum() / mask_BT.sum()).float()


def fired(codes_BTF: Tensor, mask_BT: Tensor | None = None) -> Tensor:
    """Bool [F]: which latents are non-zero at any kept position (masked, not indexed, as in ``l0``)."""
    on_BTF = codes_BTF != 0
    if mask_BT is not None:
        on_BTF &= mask_BT[..., None]
    return on_BTF.reshape(-1, on_BTF.shape[-1]).any(0)


def _flat(t_BTX: Tensor, mask_BT: Tensor | None) -> Tensor:
    t = t_BTX.reshape(-1, t_BTX.shape[-1])
    return t if mask_BT is None else t[mask_BT.reshape(-1)]
