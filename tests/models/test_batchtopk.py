import pytest
import torch
from torch.testing import assert_close

from ctxsae.models.base import window_starts
from ctxsae.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from ctxsae.train.objective import LossConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _sae(k=5, threshold_momentum=0.1) -> BatchTopKSAE:
    torch.manual_seed(0)
    return BatchTopKSAE(BatchTopKConfig(d_in=32, d_sae=96, k=k, auxk_k=8, threshold_momentum=threshold_momentum))


def test_training_keeps_the_k_times_n_largest_of_the_whole_batch():
    sae, x = _sae(), torch.randn(3, 7, 32)
    out = sae.train()(x, window_starts(3, 7))
    assert out.codes.shape == (3, 7, 96) and out.reconstruction.shape == x.shape
    assert out.effective_codes is out.codes
    relu = sae.pre_acts(x).relu()
    kth = relu.flatten().topk(5 * 21).values[-1]
    assert_close(out.codes, torch.where(relu >= kth, relu, 0.0))
    l0_BT = (out.codes != 0).sum(-1)
    assert l0_BT.sum() == 5 * 21  # mean L0 exactly k ...
    assert l0_BT.min() < 5 < l0_BT.max()  # ... shared unevenly between positions


def test_inference_applies_the_threshold():
    sae, x = _sae(), torch.randn(3, 7, 32)
    with torch.no_grad():
        sae.threshold.fill_(0.8)
    pre = sae.pre_acts(x)
    assert_close(sae.eval()(x, window_starts(3, 7)).codes, pre * (pre > 0.8))


@pytest.mark.parametrize("training", [True, False])
def test_sparse_decode_matches_dense_decode_and_its_gradients(training):
    sae, x = _sae(), torch.randn(3, 7, 32)
    sae.train(training)
    with torch.no_grad():
        sae.threshold.fill_(1.0)
        sae.b_dec.normal_()
        x[0, 3] = sae.b_dec  # pre-activations all 0 there: at inference, a position with no latent
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    out = sae(x, window_starts(3, 7))
    assert training or ((out.codes != 0).sum(-1) == 0).any()
    assert_close(out.reconstruction, out.codes @ sae.W_dec + sae.b_dec)
    target = torch.randn_like(x)
    sparse = torch.autograd.grad((out.reconstruction - target).pow(2).sum(), params)
    out = sae(x, window_starts(3, 7))
    dense = torch.autograd.grad((sae.decode(out.codes) - target).pow(2).sum(), params)
    for a, b in zip(sparse, dense):
        assert_close(a, b)


def test_threshold_is_an_ema_of_the_smallest_kept_activation():
    sae, x1, x2 = _sae(threshold_momentum=0.1), torch.randn(3, 7, 32), torch.randn(3, 7, 32)

    def smallest_kept(out):
        return out.codes[out.codes > 0].min()

    with torch.no_grad():
        m1 = smallest_kept(sae.train()(x1, window_starts(3, 7)))
        assert_close(sae.threshold, m1)  # the first batch sets it
        m2 = smallest_kept(sae(x2, window_starts(3, 7)))
        assert_close(sae.threshold, 0.9 * m1 + 0.1 * m2)
        sae.eval()(x1, window_starts(3, 7))
        assert_close(sae.threshold, 0.9 * m1 + 0.1 * m2)  # inference leaves it alone


def test_auxk_against_dead_latents():
    sae, x = _sae(), torch.randn(3, 7, 32)
    out = sae.train()(x, window_starts(3, 7))
    assert (sae.auxiliary_loss(x, out, torch.zeros(96, dtype=torch.bool)) == 0).all()
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::6] = True
    aux = sae.auxiliary_loss(x, out, dead)
    assert (aux > 0).all()
    aux.sum().backward()
    assert (sae.W_enc.grad[:, ~dead] == 0).all() and (sae.W_enc.grad[:, dead] != 0).any()


def test_trains_to_low_fvu_and_inference_l0_near_k(fit, token_windows, evaluate):
    torch.manual_seed(0)
    sae = BatchTopKSAE(BatchTopKConfig(d_in=64, d_sae=128, k=8, threshold_momentum=0.05))  # short run: a faster EMA
    sae.init_from_data(token_windows.flatten(0, 1))
    with torch.no_grad():
        starts = window_starts(*token_windows.shape[:2])
        fvu_init = ((sae.train()(token_windows, starts).reconstruction - token_windows).pow(2).sum()
                    / (token_windows - token_windows.mean((0, 1))).pow(2).sum()).item()
    fit(sae, token_windows, loss=LossConfig(auxk=1 / 32), steps=200, lr=1e-2)
    with torch.no_grad():
        train_out = sae.train()(token_windows, starts)
    assert (train_out.codes != 0).sum() == 8 * token_windows.shape[0] * token_windows.shape[1]
    fvu_end, l0_end = evaluate(sae, token_windows)  # inference mode: the learned threshold
    assert fvu_end < 0.13 and fvu_end < fvu_init / 6, (fvu_init, fvu_end)
    assert 6 < l0_end < 10, l0_end


def test_save_load_round_trip(token_windows, round_trip, tmp_path):
    torch.manual_seed(0)
    sae = BatchTopKSAE(BatchTopKConfig(d_in=64, d_sae=128, k=8, auxk_k=32, threshold_momentum=0.05))
    with torch.no_grad():
        sae.train()(token_windows, window_starts(*token_windows.shape[:2]))  # sets the threshold buffer, which must survive the trip
    assert sae.threshold > 0
    round_trip(sae, token_windows[:4], tmp_path / "sae.safetensors")
