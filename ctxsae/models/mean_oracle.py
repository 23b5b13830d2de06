"""Mean oracle: a TopK SAE given the document's running mean of *earlier activations* for free.

Not a design but a bound: its decoder reads x_{<t}, which no code sent, so it breaks the contract
(novel codes carry everything the decoder reads) on purpose. It measures what a perfect region code
could add to a TopK SAE, trained rather than assumed:

    m_t     = mean(x_s : s < t, s in t's document)          the causal region mean, strictly before t
    c_t     = (m_t - b_dec) W_ctx  (0 at a document's first position: nothing before it)
    z_t     = TopK_k(ReLU(pre(x_t - c_t)))                  what the mean does not explain
    x_hat_t = z_t W_dec + c_t + b_dec

W_ctx [d_in, d_in] (0 at init: the model starts as TopK, output for output) is the best linear
read of the mean that training finds, so the oracle gets more than the mean itself. Its novel-L0
ratio at matched FVU is, as far as training finds it, the lowest a context read linearly from the
document mean could reach; read beside the region-variance share, which assumes the mean's explained
variance and the codes' simply add (they do not: TopK's codes already carry much of the mean).

Why this bound. The region-variance share (``ctxsae.metrics.persistence.RegionMeanBound``) put the
document mean at 4% of the variance at layer 16 and 10-14% at layer 24 of SmolLM2, which read off
the TopK front allows an L0 ratio of 0.6 and below 0.5; the region SAE, whose 16 region latents
read the same mean almost for free, gained nothing. Either the room is not there or the region SAE
failed to use it: this model, with the whole mean free, says which.

It is ``DocumentMeanSAE`` (the same W_ctx, attribution and context figures) given the mean of the
activations instead of that of its own reconstructions: the design's gap to it is what not reading
x_{<t} costs. Effective codes are the novel codes (``is``): the context is not in the dictionary basis,
it is the documented extra term c_t of the reconstruction. The map reports the oracle as a bound, not
as an arm.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ctxsae.models.base import SAEOutput
from ctxsae.models.document_mean import DocumentMeanSAE
from ctxsae.models.topk import TopKConfig


@dataclass
class MeanOracleConfig(TopKConfig):
    _target_: str = "ctxsae.models.mean_oracle.MeanOracleSAE"


class MeanOracleSAE(DocumentMeanSAE):
    """The document-mean SAE given the mean of earlier *activations* (not reconstructions) for free."""

    architecture = "mean_oracle"
    config_class = MeanOracleConfig
    cfg: MeanOracleConfig

    def forward(self, x_BTD: Tensor, doc_start_BT: Tensor) -> SAEOutput:
        """aux: "context" c [B, T, D], the free term of the reconstruction."""
        return self.read_activation_mean(x_BTD, doc_start_BT)
