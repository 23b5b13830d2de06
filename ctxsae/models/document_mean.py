"""Document-mean SAE: a TopK SAE whose context is the mean of what it has reconstructed so far.

The mean oracle (``mean_oracle.py``) showed that the document's running mean of earlier activations,
given for free, lets a TopK SAE reach the same FVU with fewer codes, where the region SAE's few paid
region latents saved nothing. This design gets that mean without paying for it and without reading
anything no code sent: the decoder already knows every earlier reconstruction, so it keeps their mean.

    S_t     = sum(x_hat_s - b_dec : s < t, s in t's document),  n_t = how many   (0 at a document start)
    c_t     = (S_t / n_t) W_ctx                                  (0 where n_t = 0)
    z_t     = TopK_k(ReLU(pre(x_t - c_t)))                       what the mean does not explain
    x_hat_t = z_t W_dec + c_t + b_dec

c_t is a function of z_{<t} (and of W_ctx), so the novel codes are the whole message: a receiver of
the codes replays x_hat exactly (tested). W_ctx [d_in, d_in] is 0 at init, so the model starts as TopK.
Its effective codes are its novel codes; the context reaches the reconstruction as a dense d_in
vector, not as latents.

Cost. Which entries z_t selects depends on c_t, hence on z_{<t}: a step loop over T, as in the
recurrent SAE, each step one [B, d_in] x [d_in, d_sae] product (c_t W_enc, by linearity
pre(x_t - c_t) = pre(x_t) - c_t W_enc), a top-k and a k-row decode. It runs without a graph and
records the choices; the values (and, without teacher forcing, the gradients) are then formed for
all positions at once.

Training. In training mode (``teacher_forcing``, the default) the model reads the mean of the earlier
*activations* instead, as ``MeanOracleSAE`` does: every position at once, no loop, and the encoder,
dictionary and W_ctx learn what the mean is worth. In eval mode (validation, ``evaluate.py``) it
always decodes as above, from its codes alone. Teacher forcing is there because training on its own
means did not work: on the book at layer 24 (scan size, k 16) the step loop with the means taken as
given (no gradient from a position back into earlier codes) ended at TopK's FVU (0.331 against
0.329), and adding the gradient through the mean into earlier codes did not help (0.334), while the
oracle's trained weights run through this model's own means kept most of the oracle's gain (0.316;
the oracle 0.310). ``teacher_forcing=false`` trains with the loop, means taken as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae.models.base import ContextualSAE, SAEOutput, context_energy_share
from ctxsae.models.region import running_mean
from ctxsae.models.sparse_encoder import dense_pre_acts, one_thread_on_cpu
from ctxsae.models.topk import TopKConfig, TopKSAE


@dataclass
class DocumentMeanConfig(TopKConfig):
    _target_: str = "ctxsae.models.document_mean.DocumentMeanSAE"
    teacher_forcing: bool = True  # train on the mean of earlier activations (the oracle's forward); eval mode always decodes from codes


def mean_before(x_BTD: Tensor, doc_start_BT: Tensor) -> tuple[Tensor, Tensor]:
    """(m [B, T, D]: the mean of x over t's document strictly before t, 0 where there is none;
    whether there is [B, T])."""
    m_BTD = F.pad(running_mean(x_BTD, doc_start_BT)[:, :-1], (0, 0, 1, 0))
    has_BT = ~doc_start_BT
    return m_BTD * has_BT[..., None], has_BT


class DocumentMeanSAE(TopKSAE, ContextualSAE):
    """k novel codes per position; the context is the mean of the document's earlier reconstructions."""

    architecture = "document_mean"
    config_class = DocumentMeanConfig
    cfg: DocumentMeanConfig

    def __init__(self, cfg: DocumentMeanConfig):
        super().__init__(cfg)
        self.W_ctx = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_in))

    @torch.no_grad()
    def step_loop(self, pre_BTF: Tensor, doc_start_BT: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the mean of earlier reconstructions S_t / n_t [B, T, D] (0 at a document start), the pre-activations
        of x_t - c_t [B, T, F], the chosen latents [B, T, k]), one position at a time."""
        B, T, F = pre_BTF.shape
        mean_BTD = pre_BTF.new_zeros(B, T, self.d_in)
        pre_ctx_BTF = torch.empty_like(pre_BTF)
        idx_BTK = torch.empty(B, T, self.cfg.k, dtype=torch.long, device=pre_BTF.device)
        sum_BD, n_B1 = pre_BTF.new_zeros(B, self.d_in), pre_BTF.new_zeros(B, 1)
        keep_TB1 = (~doc_start_BT).T[..., None].to(pre_BTF.dtype)
        with one_thread_on_cpu(pre_BTF.device):
            for t in range(T):
                sum_BD.mul_(keep_TB1[t])
                n_B1.mul_(keep_TB1[t])
                mean_BD = torch.div(sum_BD, n_B1.clamp_min(1), out=mean_BTD[:, t])
                c_BD = mean_BD @ self.W_ctx
                pre_BF = torch.sub(pre_BTF[:, t], c_BD @ self.W_enc, out=pre_ctx_BTF[:, t])
                vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=-1, sorted=False)
                idx_BTK[:, t] = idx_BK
                sum_BD.add_(torch.einsum("bk,bkd->bd", vals_BK.relu_(), self.W_dec[idx_BK])).add_(c_BD)
                n_B1.add_(1)
        return mean_BTD, pre_ctx_BTF, idx_BTK

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "context" c [B, T, D], the mean's part of the reconstruction."""
        if self.training and self.cfg.teacher_forcing:
            return self.read_activation_mean(x_BTD, doc_start_BT)
        pre_BTF, b_F = dense_pre_acts(self, x_BTD)
        mean_BTD, pre_ctx_BTF, idx_BTK = self.step_loop(pre_BTF, doc_start_BT)
        c_BTD = mean_BTD @ self.W_ctx
        pre_BTF, z_BTF, zW_BTD = self.topk_code(x_BTD - c_BTD, (pre_ctx_BTF, b_F), idx_BTK)
        return SAEOutput(z_BTF, z_BTF, zW_BTD + c_BTD + self.b_dec, pre_BTF, {"context": c_BTD})

    def read_activation_mean(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """The forward pass with the mean of the document's earlier *activations* in place of that of its
        reconstructions (teacher forcing; ``MeanOracleSAE``'s forward): every position at once."""
        m_BTD, has_BT = mean_before(x_BTD, doc_start_BT)
        c_BTD = ((m_BTD - self.b_dec) @ self.W_ctx) * has_BT[..., None]
        pre_BTF, z_BTF, zW_BTD = self.topk_code(x_BTD - c_BTD)
        return SAEOutput(z_BTF, z_BTF, zW_BTD + c_BTD + self.b_dec, pre_BTF, {"context": c_BTD})

    # -- reading the context pathway ----------------------------------------------------------------
    def attribute(self, out: SAEOutput, b: int, t: int, i: int) -> list[tuple[int, float]]:
        """The effective code is the novel code: all of it is t's (the mean reaches the reconstruction, not the codes)."""
        z = out.codes[b, t, i].item()
        return [(t, z)] if z != 0 else []

    @torch.no_grad()
    def context_stats(self, out: SAEOutput) -> dict[str, float]:
        """``context_energy_share``: the mean's part of the reconstruction (c against c + z W_dec)."""
        c_ND = out.aux["context"].flatten(0, 1)
        decoded_ND = out.reconstruction.flatten(0, 1) - self.b_dec
        return {
            "context_params": float(self.W_ctx.numel()),
            "context_energy_share": context_energy_share(c_ND, decoded_ND),
            "context_norm_ratio": (c_ND.norm(dim=-1).mean() / decoded_ND.norm(dim=-1).mean().clamp_min(1e-12)).item(),
        }
