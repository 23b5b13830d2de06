"""Sparse backward passes for codes chosen by a selection rule (TopK, BatchTopK, recurrent, attention, TFA).

A TopK-family SAE computes the dense pre-activations ``pre = x W_enc + b`` [N, d_sae] (the
selection needs all of them), but only the selected entries reach the loss: the gradient
arriving at ``pre`` is zero except at k entries per row. Plain autograd nevertheless forms it
as a dense [N, d_sae] matrix and multiplies it back, 2 N d_in d_sae FLOPs for ``dL/dW_enc``
(and as many again for ``dL/dx`` where the input needs one). Here the gradient is formed from
the selected entries only, as a sparse [N, d_sae] matrix with k entries per row:

    dL/dW_enc = x^T S      2 N k d_in FLOPs     (S: the k-sparse gradient at pre)
    dL/db     = sum_n S_n  N k
    dL/dx     = S W_enc^T  2 N k d_in           (only when x needs a gradient: attention, TFA)

Sparsify (EleutherAI) does the same in its fused encoder with ``index_add`` over the
materialised [N k, d_in] contributions. Here both products are ``embedding_bag`` sums, which
materialise nothing: x^T S is a bag per latent (its selected positions, weighted by their
gradients) after one stable sort of the latent indices (``transposed_sparse_product``). The
decoder's weight gradient is the same product, so ``SparseDecode`` uses it too, in place of
``embedding_bag``'s own backward, whose parallel sort is what stalled a loaded CPU (below).

The forward values are those of ``SAE.pre_acts`` bit for bit: the caller computes the dense
product itself (``dense_pre_acts``), chooses entries from it however its rule says, and passes
both in. ``SelectedPreActs`` returns the chosen values and the dense pre-activations again,
now attached to the graph:

* the chosen values carry the sparse gradient above;
* the dense pre-activations still have an exact gradient path for whoever reads them. AuxK
  reads them when latents are dead (its top-k among the dead latents); its gradient arrives
  dense and the backward then takes the dense products, i.e. costs what plain autograd costs,
  and only on the steps where AuxK is active. Nothing changes in what AuxK learns (sparsify's
  fused encoder drops this gradient; we keep it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae.models.base import SAE


@contextmanager
def one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run small or sort-heavy CPU operations on one thread.

    Each split of an operation across threads ends in a barrier that waits for the slowest thread:
    on a loaded machine a descheduled thread made a step loop's [B, F] operations cost a scheduler
    time slice each (~20 ms, against ~0.05 ms of work), and the parallel sort of 65k indices 0.5 s
    against 3 ms on one thread. The big products keep all threads.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class OneThread(torch.autograd.Function):
    """``fn(*inputs)`` with its forward and backward passes under ``one_thread_on_cpu``.

    For a block of many medium-sized operations (an SAE's context pathway): each would otherwise be
    split across threads, and on a loaded machine each split can wait a scheduler slice for its
    second thread. The block runs with its own autograd graph, built in the forward pass and
    differentiated in the backward pass on one thread: the same operations, so the same values and
    gradients. An input ``fn`` does not differentiate through gets a zero gradient, not None: the
    optimizer then steps its parameters as it would through a block that multiplies them by 0.
    ``fn`` returns a tuple of tensors; those that are not floating point carry no gradient.
    Use ``OneThread.apply(fn, *inputs)``; not twice differentiable.
    """

    @staticmethod
    def forward(ctx, fn, *inputs):
        device = next(x.device for x in inputs if isinstance(x, Tensor))
        ctx.set_materialize_grads(False)  # an output no one reads (aux only) sends None, not a zero tensor of its size
        leaves = [x.detach().requires_grad_(x.requires_grad) if isinstance(x, Tensor) else x for x in inputs]
        with torch.set_grad_enabled(any(ctx.needs_input_grad)), one_thread_on_cpu(device):
            outputs = fn(*leaves)
        ctx.device, ctx.leaves, ctx.outputs = device, leaves, outputs
        ctx.mark_non_differentiable(*(o for o in outputs if not o.is_floating_point()))
        return tuple(o.detach() for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        leaves, outputs = ctx.leaves, ctx.outputs
        ctx.leaves = ctx.outputs = None  # the block's graph is spent, as the outer one is
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad and g is not None]
        wanted = [x for x in leaves if isinstance(x, Tensor) and x.requires_grad]
        found = [None] * len(wanted)
        if pairs and wanted:
            with one_thread_on_cpu(ctx.device):
                found = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], materialize_grads=True)
        found = iter(found)
        return (None, *(next(found) if isinstance(x, Tensor) and x.requires_grad else None for x in leaves))


def transposed_sparse_product(rows_M: Tensor, cols_M: Tensor, vals_M: Tensor, dense_ND: Tensor, n_cols: int) -> Tensor:
    """S^T dense [n_cols, D] for the sparse [N, n_cols] matrix S with entries (rows, cols, vals).

    Row c of the result is a bag: sum over the entries in column c of val * dense[row]. One stable
    sort groups the entries by column; ``embedding_bag`` then sums the bags without materialising
    the [M, D] products (empty bags are zero).
    """
    with one_thread_on_cpu(cols_M.device):
        # int32 keys sort in ~0.55x the time of int64 ones on the CPU, in the same (stable) order
        order_M = (cols_M.to(torch.int32) if n_cols < 2**31 else cols_M).argsort(stable=True)
        counts = torch.bincount(cols_M, minlength=n_cols)
    offsets = counts.cumsum(0) - counts
    # index_select, not rows_M[order_M]: advanced indexing took ~12x as long on the CPU (252k entries: 2.4 ms against 0.2)
    return F.embedding_bag(rows_M.index_select(0, order_M), dense_ND, offsets, mode="sum",
                           per_sample_weights=vals_M.index_select(0, order_M).to(dense_ND.dtype))


class SparseDecode(torch.autograd.Function):
    """sum_j vals_j W_dec[idx_j] per bag (``embedding_bag`` forward) with its backward formed as above.

    ``idx``/``vals`` flat [M] with ``offsets`` [N] (where each position's entries start) and ``rows``
    [M] (the position of each entry). dL/dW_dec = S^T dL/dout (``transposed_sparse_product``);
    dL/dvals_j = <dL/dout[row_j], W_dec[idx_j]> (``sampled_products``).
    ``skip_zeros``: entries whose value is exactly 0 (a closed carry, a value not held) add nothing to
    the output or to dL/dW_dec, so both are formed from the others; every entry still gets dL/dvals.
    """

    @staticmethod
    def forward(ctx, W_dec: Tensor, idx_M: Tensor, vals_M: Tensor, offsets_N: Tensor, rows_M: Tensor,
                skip_zeros: bool = False) -> Tensor:
        live = (idx_M, vals_M, offsets_N, rows_M)
        if skip_zeros:
            live_L = vals_M.nonzero().squeeze(1)
            rows_L = rows_M.index_select(0, live_L)
            counts_N = torch.bincount(rows_L, minlength=len(offsets_N))
            live = (idx_M.index_select(0, live_L), vals_M.index_select(0, live_L), counts_N.cumsum(0) - counts_N, rows_L)
        ctx.save_for_backward(W_dec, idx_M, offsets_N, rows_M, *live)
        idx_L, vals_L, offsets_L, _ = live
        return F.embedding_bag(idx_L, W_dec, offsets_L, mode="sum", per_sample_weights=vals_L.to(W_dec.dtype))

    @staticmethod
    def backward(ctx, grad_ND: Tensor):
        W_dec, idx_M, offsets_N, rows_M, idx_L, vals_L, _, rows_L = ctx.saved_tensors
        grad_ND = grad_ND.to(W_dec.dtype).contiguous()
        grad_W = transposed_sparse_product(rows_L, idx_L, vals_L, grad_ND, W_dec.shape[0]) if ctx.needs_input_grad[0] else None
        grad_vals = sampled_products(grad_ND, W_dec, idx_M, offsets_N, rows_M).to(vals_L.dtype) if ctx.needs_input_grad[2] else None
        return grad_W, None, grad_vals, None, None, None


def sampled_products(grad_ND: Tensor, W_dec: Tensor, idx_M: Tensor, offsets_N: Tensor, rows_M: Tensor) -> Tensor:
    """<grad[rows_j], W_dec[idx_j]> for every entry j [M]: the dense product grad W_dec^T sampled at the entries.

    On the CPU this is ``torch.sparse.sampled_addmm`` (an SDDMM over the entries in CSR form: the
    entries of a position are contiguous, which is what ``offsets`` says), whose vectorised dot
    products took ~0.75x the time of ATen's per-sample-weights backward, one BLAS call per entry
    (311k entries of an open recurrent SAE: 18 ms against 24). Elsewhere ATen's kernel.
    """
    if grad_ND.device.type != "cpu":
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(grad_ND, W_dec, idx_M, offsets_N, rows_M, 0, -1)
    crow = torch.cat([offsets_N, offsets_N.new_tensor([len(idx_M)])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        # zeros, not empty: sampled_addmm still multiplies them by beta = 0, and 0 * (NaN garbage) is NaN
        pattern = torch.sparse_csr_tensor(crow, idx_M, grad_ND.new_zeros(len(idx_M)), (len(offsets_N), W_dec.shape[0]),
                                          check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, grad_ND, W_dec.T, beta=0.0).values()


def folded_bias(sae: SAE) -> Tensor:
    """b_enc - b_dec W_enc [d_sae]: ``SAE.pre_acts``'s bias, with b_dec folded in (see its docstring)."""
    return sae.b_enc - sae.b_dec @ sae.W_enc


class SelectedPreActs(torch.autograd.Function):
    """(pre.flatten()[idx], pre) for ``pre = x_ND W_enc + b_F``, given detached ``pre_NF`` and flat ``idx``.

    ``idx`` (any shape, int64) indexes the flattened [N, d_sae] pre-activations and must not
    repeat an entry. The first output has ``idx``'s shape.
    """

    @staticmethod
    def forward(ctx, x_ND: Tensor, W_enc: Tensor, b_F: Tensor, pre_NF: Tensor, idx: Tensor):
        ctx.set_materialize_grads(False)  # an unused output sends None, not a dense zero tensor
        ctx.save_for_backward(x_ND, W_enc, idx)
        return pre_NF.flatten().take(idx), pre_NF

    @staticmethod
    def backward(ctx, grad_vals: Tensor | None, grad_pre_NF: Tensor | None):
        x_ND, W_enc, idx = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        N, n_latents = x_ND.shape[0], W_enc.shape[1]
        dtype = W_enc.dtype
        if grad_pre_NF is not None:  # someone read the dense pre-activations (AuxK): dense products
            G_NF = grad_pre_NF.to(dtype).clone()
            if grad_vals is not None:
                G_NF.view(-1).index_add_(0, idx.flatten(), grad_vals.flatten().to(dtype))
            grad_x = G_NF @ W_enc.T if need_x else None
            grad_W = x_ND.to(dtype).T @ G_NF if need_W else None
            grad_b = G_NF.sum(0) if need_b else None
            return grad_x, grad_W, grad_b, None, None
        if grad_vals is None:
            return None, None, None, None, None
        flat, g = idx.flatten(), grad_vals.flatten().to(dtype)
        if g.device.type == "cpu":  # (on a GPU, nonzero would wait for the device every step)
            live = g.nonzero().squeeze(1)  # an entry whose gradient is exactly 0 adds nothing to any product
            if len(live) < len(g):  # (a value ReLU'd to 0; an attention value no carry reads: all of them while closed)
                flat, g = flat.index_select(0, live), g.index_select(0, live)
        rows, cols = flat // n_latents, flat % n_latents
        grad_x = transposed_sparse_product(cols, rows, g, W_enc.T.contiguous(), N) if need_x else None
        grad_W = transposed_sparse_product(rows, cols, g, x_ND.to(dtype), n_latents).T if need_W else None
        grad_b = torch.zeros(n_latents, dtype=dtype, device=g.device).index_add_(0, cols, g) if need_b else None
        return grad_x, grad_W, grad_b, None, None


def dense_pre_acts(sae: SAE, x_BTD: Tensor) -> tuple[Tensor, Tensor]:
    """(pre [.., d_sae] without a graph, the folded bias with one): the values ``SAE.pre_acts`` computes."""
    b_F = folded_bias(sae)
    with torch.no_grad():
        pre = x_BTD @ sae.W_enc + b_F
    return pre, b_F


def select(sae: SAE, x_BTD: Tensor, b_F: Tensor, pre: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen pre-activations, dense pre-activations), both on the graph; ``idx`` indexes ``pre.flatten()``.

    ``pre`` and ``b_F`` come from ``dense_pre_acts(sae, x_BTD)``; any leading shape of ``x_BTD`` works.
    """
    x_ND, pre_NF = x_BTD.reshape(-1, x_BTD.shape[-1]), pre.reshape(-1, sae.d_sae)
    vals, pre_NF = SelectedPreActs.apply(x_ND, sae.W_enc, b_F, pre_NF, idx)
    return vals, pre_NF.view_as(pre)


def row_offsets(idx_NK: Tensor, d_sae: int) -> Tensor:
    """Per-row indices [..., k] into the last dim -> indices into the flattened tensor."""
    rows = torch.arange(idx_NK[..., 0].numel(), device=idx_NK.device).view(idx_NK.shape[:-1] + (1,))
    return idx_NK + rows * d_sae


def encode_topk(sae: SAE, x_BTD: Tensor, k: int, dense: tuple[Tensor, Tensor] | None = None,
                idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(values [.., k] after ReLU, their latent indices [.., k], dense pre-activations [.., d_sae]) of
    TopK_k(ReLU(pre_acts(x))), with the encoder's gradient formed from the k chosen entries.

    Values and indices are those of ``topk_relu(sae.pre_acts(x), k)``. ``dense``: the result of
    ``dense_pre_acts(sae, x_BTD)`` where the caller has it already; ``idx``: the top k's latents
    where the caller found them another way (their order may differ from ``topk``'s).
    """
    pre, b_F = dense if dense is not None else dense_pre_acts(sae, x_BTD)
    if idx is None:
        idx = pre.topk(k, dim=-1, sorted=False).indices
    vals, pre = select(sae, x_BTD, b_F, pre, row_offsets(idx, sae.d_sae))
    return vals.relu(), idx, pre
