import pytest
import torch
from torch.testing import assert_close

from ctxsae.errors import UserError
from ctxsae.models import load_sae
from ctxsae.models.base import window_starts
from ctxsae.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from ctxsae.models.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from ctxsae.cache.dataset import Windows
from ctxsae.train.objective import LossConfig, compute_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def _sae(**kw) -> MatryoshkaSAE:
    torch.manual_seed(0)
    fields = {"prefix_fractions": [0.125, 0.5], "prefix_weights": [0.5, 2.0]} | kw
    return MatryoshkaSAE(MatryoshkaConfig(d_in=32, d_sae=96, k=5, auxk_k=8, **fields))


@pytest.mark.parametrize("training", [True, False])
def test_nested_losses_reconstruct_from_each_prefix_only(training):
    sae, x = _sae().train(training), torch.randn(3, 7, 32)
    with torch.no_grad():
        sae.threshold.fill_(0.5)
    out = sae(x, window_starts(3, 7))
    losses = sae.nested_losses(x, out)
    assert list(losses) == ["prefix_12", "prefix_48"]
    for (name, loss_BT), m, w in zip(losses.items(), (12, 48), (0.5, 2.0)):
        dense_BTD = out.codes[..., :m] @ sae.W_dec[:m] + sae.b_dec
        assert_close(loss_BT, w * (x - dense_BTD).pow(2).sum(-1))
        # a prefix's loss reaches no decoder row at or beyond its end, and some row before it
        W_dec_grad, = torch.autograd.grad(loss_BT.sum(), sae.W_dec, retain_graph=True)
        assert (W_dec_grad[m:] == 0).all() and (W_dec_grad[:m] != 0).any()


def test_forward_is_batchtopk_over_the_whole_dictionary():
    sae, x = _sae(), torch.randn(3, 7, 32)
    torch.manual_seed(0)
    plain = BatchTopKSAE(BatchTopKConfig(d_in=32, d_sae=96, k=5, auxk_k=8))
    out, plain_out = sae.train()(x, window_starts(3, 7)), plain.train()(x, window_starts(3, 7))
    assert out.effective_codes is out.codes
    for a, b in zip(out[:3], plain_out[:3]):
        assert torch.equal(a, b)


def test_objective_adds_and_logs_each_prefix_term():
    sae, x = _sae(), torch.randn(3, 7, 32)
    doc_start = torch.zeros(3, 7, dtype=torch.bool)
    doc_start[:, 0] = True
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 0] = False
    loss, out, logs = compute_loss(sae, Windows(x, torch.full((3, 7), -1), doc_start, mask), LossConfig(mse=2.0), 0)
    nested = sae.nested_losses(x, out)
    for name in ("prefix_12", "prefix_48"):
        assert_close(logs[f"loss/{name}"], nested[name][mask].mean())
    full = (out.reconstruction - x).pow(2).sum(-1)[mask].mean()
    assert_close(loss, 2.0 * (full + logs["loss/prefix_12"] + logs["loss/prefix_48"]))


@pytest.mark.parametrize("fractions, weights", [([0.5, 0.25], [1.0, 1.0]), ([0.5, 1.0], [1.0, 1.0]), ([0.5], [1.0, 1.0])])
def test_bad_prefixes_are_one_line_user_errors(fractions, weights):
    with pytest.raises(UserError, match="model.prefix"):
        MatryoshkaSAE(MatryoshkaConfig(d_in=32, d_sae=96, prefix_fractions=fractions, prefix_weights=weights))


def test_training_makes_a_prefix_reconstruct_on_its_own(fit, token_windows):
    """Against a plain BatchTopK SAE trained alike, the Matryoshka SAE's first quarter of the latents alone
    reconstruct much better: the nested loss is what makes a prefix a usable dictionary."""
    def prefix_fvu(sae, m):
        with torch.no_grad():
            codes = sae.train()(token_windows, window_starts(*token_windows.shape[:2])).codes
            recon = codes[..., :m] @ sae.W_dec[:m] + sae.b_dec
        return ((recon - token_windows).pow(2).sum() / (token_windows - token_windows.mean((0, 1))).pow(2).sum()).item()

    fvus = {}
    for cls in (MatryoshkaSAE, BatchTopKSAE):
        torch.manual_seed(0)
        sae = cls(cls.config_class(d_in=64, d_sae=128, k=8, threshold_momentum=0.05))
        fit(sae, token_windows, loss=LossConfig(auxk=1 / 32), steps=100, lr=1e-2)
        fvus[cls.__name__] = prefix_fvu(sae, 32)  # the second prefix: 1/4 of 128
    assert fvus["MatryoshkaSAE"] < 0.8 * fvus["BatchTopKSAE"], fvus


def test_save_load_round_trip(token_windows, round_trip, tmp_path):
    cfg = MatryoshkaConfig(d_in=64, d_sae=128, k=8, auxk_k=32, prefix_fractions=[0.125, 0.5], prefix_weights=[1.0, 0.5])
    torch.manual_seed(0)
    sae = MatryoshkaSAE(cfg)
    with torch.no_grad():
        sae.train()(token_windows, window_starts(*token_windows.shape[:2]))  # sets the threshold buffer, which must survive the trip
    round_trip(sae, token_windows[:4], tmp_path / "sae.safetensors")
    loaded = load_sae(tmp_path / "sae.safetensors")
    assert loaded.prefix_sizes == [16, 64] and loaded.prefix_weights == [1.0, 0.5]
