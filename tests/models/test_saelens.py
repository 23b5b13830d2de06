"""SAELens round trips: our SAEs opened by sae_lens give our codes and raw-unit reconstructions, and back."""

from __future__ import annotations

import pytest
import torch

from ctxsae.errors import UserError
from ctxsae.models import load_sae
from ctxsae.models.base import window_starts
from ctxsae.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from ctxsae.models.jumprelu import JumpReLUConfig, JumpReLUSAE
from ctxsae.models.recurrent import RecurrentConfig, RecurrentSAE
from ctxsae.models.relu import ReLUConfig, ReLUSAE
from ctxsae.models.saelens import write_saelens
from ctxsae.models.topk import TopKConfig, TopKSAE

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install sae-lens): the round trips need it")

D_IN, D_SAE = 16, 48


def trained_like(sae):
    """Random non-trivial weights, biases, thresholds and activation scale, as a trained run would have."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.act_scale.fill_(2.7)
        if isinstance(sae, JumpReLUSAE):
            sae.log_threshold.copy_(torch.randn(D_SAE, generator=g).mul(0.3).sub(0.5))
        if isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.4)
    return sae.eval()


OURS = {
    "relu": lambda: ReLUSAE(ReLUConfig(d_in=D_IN, d_sae=D_SAE)),
    "topk": lambda: TopKSAE(TopKConfig(d_in=D_IN, d_sae=D_SAE, k=5)),
    "batchtopk": lambda: BatchTopKSAE(BatchTopKConfig(d_in=D_IN, d_sae=D_SAE, k=5)),
    "jumprelu": lambda: JumpReLUSAE(JumpReLUConfig(d_in=D_IN, d_sae=D_SAE)),
}


@pytest.mark.parametrize("name", OURS)
def test_exported_sae_opens_in_saelens_with_our_codes_on_raw_activations(tmp_path, name):
    sae = trained_like(OURS[name]())
    write_saelens(sae, tmp_path, {"model_name": "tiny", "hook_name": "blocks.1.hook_resid_post"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    x_raw = torch.randn(4, 7, D_IN) / 2.7 + 0.1
    with torch.no_grad():
        ours = sae(sae.normalize(x_raw), window_starts(4, 7))
        codes = theirs.encode(x_raw)
        assert (ours.codes > 0).sum() > 0
        torch.testing.assert_close(codes, ours.codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), sae.denormalize(ours.reconstruction), rtol=1e-5, atol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post" and theirs.cfg.metadata.model_name == "tiny"


def test_a_contextual_sae_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UserError, match="RecurrentSAE is contextual"):
        write_saelens(RecurrentSAE(RecurrentConfig(d_in=D_IN, d_sae=D_SAE)), tmp_path, {})
    assert not (tmp_path / "cfg.json").exists()


def saelens_sae(architecture: str, **extra):
    cls, cfg_cls = sae_lens.registry.get_sae_class(architecture)
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize(
    "architecture,extra",
    [("standard", {}), ("topk", {"k": 5}), ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
     ("jumprelu", {}), ("standard", {"apply_b_dec_to_input": False})],
)
def test_saelens_sae_loads_as_ours_on_raw_activations(tmp_path, architecture, extra):
    theirs = saelens_sae(architecture, **extra)
    theirs.save_model(tmp_path)
    ours = load_sae(f"saelens:{tmp_path}")
    assert float(ours.act_scale) == 1.0 and ours.d_sae == D_SAE
    x_raw = torch.randn(3, 5, D_IN)
    with torch.no_grad():
        out = ours(ours.normalize(x_raw), window_starts(3, 5))
        codes = theirs.encode(x_raw)
        assert (codes > 0).sum() > 0
        torch.testing.assert_close(out.codes, codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.denormalize(out.reconstruction), theirs.decode(codes), rtol=1e-5, atol=1e-5)


def test_saelens_options_applied_at_run_time_are_refused(tmp_path):
    theirs = saelens_sae("standard", normalize_activations="layer_norm")
    theirs.save_model(tmp_path)
    with pytest.raises(UserError, match="normalize_activations='layer_norm'"):
        load_sae(f"saelens:{tmp_path}")
