import pytest
import torch
from torch.testing import assert_close

from ctxsae.models.base import window_starts
from ctxsae.models.relu import ReLUConfig, ReLUSAE
from ctxsae.train.objective import LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_codes_are_relu_of_pre_activations_and_decoder_starts_short():
    torch.manual_seed(0)
    sae, x = ReLUSAE(ReLUConfig(d_in=32, d_sae=96, decoder_init_norm=0.1)), torch.randn(3, 7, 32)
    out = sae(x, window_starts(3, 7))
    assert out.codes.shape == (3, 7, 96) and out.reconstruction.shape == x.shape
    assert out.effective_codes is out.codes
    assert_close(out.codes, sae.pre_acts(x).relu())
    assert_close(out.reconstruction, out.codes @ sae.W_dec + sae.b_dec)
    assert not ReLUSAE.unit_norm_decoder
    assert_close(sae.W_dec.norm(dim=1), torch.full((96,), 0.1))
    assert_close(sae.W_enc, sae.W_dec.T)


def test_penalty_is_l1_weighted_by_decoder_row_norms():
    torch.manual_seed(0)
    sae, x = ReLUSAE(ReLUConfig(d_in=8, d_sae=5)), 10 * torch.randn(2, 3, 8)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([1.0, 2.0, 0.5, 3.0, 0.1])[:, None])
    out = sae(x, window_starts(2, 3))
    expected = torch.zeros(2, 3)
    for b in range(2):
        for t in range(3):
            for i in range(5):
                expected[b, t] += abs(out.codes[b, t, i]) * sae.W_dec[i].norm()
    assert (out.codes > 0).any() and (out.codes == 0).any()
    assert_close(sae.sparsity_penalty(out), expected)


def test_trains_to_low_fvu_and_sparse_codes(fit, token_windows, evaluate):
    torch.manual_seed(0)
    sae = ReLUSAE(ReLUConfig(d_in=64, d_sae=128))
    sae.init_from_data(token_windows.flatten(0, 1))
    fvu_init, l0_init = evaluate(sae, token_windows)
    fit(sae, token_windows, loss=LossConfig(sparsity=1.0), steps=200, lr=1e-2)
    fvu_end, l0_end = evaluate(sae, token_windows)
    assert fvu_end < 0.14 and fvu_end < fvu_init / 6, (fvu_init, fvu_end)
    assert l0_end < 16 and l0_end < l0_init / 4, (l0_init, l0_end)
    # Nothing renormalises the decoder: its row norms are learned.
    norms = sae.W_dec.norm(dim=1)
    assert norms.min() < 0.5 * norms.max() and norms.mean() > 0.2


def test_save_load_round_trip(token_windows, round_trip, tmp_path):
    torch.manual_seed(0)
    round_trip(ReLUSAE(ReLUConfig(d_in=64, d_sae=128, decoder_init_norm=0.2)), token_windows[:4], tmp_path / "sae.safetensors")
