"""Shared by the per-token SAE tests: synthetic sparse data with a known dictionary, and measurements."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from ctxsae.data.synthetic import SyntheticConfig, generate
from ctxsae.metrics.basic import fvu, l0
from ctxsae.models import load_sae
from ctxsae.models.base import SAE, window_starts


@pytest.fixture
def single_thread():
    """Run on one intra-op thread. At these sizes threads only add overhead, and on a busy 2-core
    machine OpenMP's spinning made a 200-step fit ~20x slower with 2 threads (110 s against 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def token_windows() -> torch.Tensor:
    """[256, 16, 64] windows; each position sums ~4 of 128 unit directions (magnitudes ~1),
    normalised like the training data path (E|x|^2 = d_in). No context structure."""
    cfg = SyntheticConfig(d_in=64, n_windows=256, n_ctx=16, region_features=False, n_token_features=128,
                          token_rate=4 / 128, noise_std=0.01)
    x = generate(cfg).x_NTD
    return x * (x.shape[-1] / x.pow(2).sum(-1).mean()).sqrt()


@torch.no_grad()
def measure(sae: SAE, x_NTD: torch.Tensor) -> tuple[float, float]:
    """(FVU, mean L0) of the SAE in inference mode."""
    was_training = sae.training
    out = sae.eval()(x_NTD, window_starts(*x_NTD.shape[:2]))
    sae.train(was_training)
    return fvu(x_NTD, out.reconstruction).item(), l0(out.codes).item()


@pytest.fixture
def evaluate():
    return measure


@pytest.fixture
def score_on_regions(fit):
    """score(make_sae, region=True) -> (held-out FVU, novel L0) of ``make_sae()`` (seed 0) after 200 steps on
    synthetic windows that are one region each (region=False: token features only)."""

    def score(make_sae, region: bool = True) -> tuple[float, float]:
        cfg = SyntheticConfig(n_windows=384, region_features=region, mean_region_len=1e6, p_region_off=0.0, seed=0)
        data, held = generate(cfg, 0, 256), generate(cfg, 256, 384)
        torch.manual_seed(0)
        sae = make_sae()
        fit(sae, data.x_NTD, data.doc_start_NT, steps=200)
        with torch.no_grad():
            out = sae.eval()(held.x_NTD, held.doc_start_NT)
        return fvu(held.x_NTD, out.reconstruction).item(), l0(out.codes).item()

    return score


def assert_round_trip(sae: SAE, x_NTD: torch.Tensor, path) -> None:
    """SAE.save then load_sae rebuilds the same class and config with the same outputs (inference mode);
    the file names the architecture, not a module path."""
    sae.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["architecture"] == sae.architecture and "_target_" not in f.metadata()["config"]
    loaded = load_sae(path)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    with torch.no_grad():
        starts = window_starts(*x_NTD.shape[:2])
        a, b = sae.eval()(x_NTD, starts), loaded.eval()(x_NTD, starts)
    for field in ("codes", "effective_codes", "reconstruction"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)


@pytest.fixture
def round_trip():
    return assert_round_trip


# -- the rules every contextual SAE obeys ---------------------------------------------------------------


def assert_strictly_causal(sae: SAE, x_BTD: torch.Tensor) -> None:
    """Changing x[:, t0+1:] leaves every output at positions <= t0 bitwise unchanged (and later ones not)."""
    out = sae(x_BTD, window_starts(*x_BTD.shape[:2]))
    for t0 in (0, 7, x_BTD.shape[1] - 2):
        x2 = x_BTD.clone()
        x2[:, t0 + 1 :] = torch.randn_like(x2[:, t0 + 1 :])
        out2 = sae(x2, window_starts(*x2.shape[:2]))
        for a, b in zip(out[:3], out2[:3]):
            assert torch.equal(a[:, : t0 + 1], b[:, : t0 + 1])
        assert not torch.equal(out.reconstruction, out2.reconstruction)


def assert_document_start_resets(sae: SAE, x_BTD: torch.Tensor, start: int = 10):
    """With a document starting at ``start``, nothing before it reaches any output from it on.

    Returns the output with the document start, for the variant's own checks.
    """
    doc_start = torch.zeros(x_BTD.shape[:2], dtype=torch.bool)
    doc_start[:, 0] = doc_start[:, start] = True
    out = sae(x_BTD, doc_start)
    x2 = x_BTD.clone()
    x2[:, :start] = torch.randn_like(x2[:, :start])
    out2 = sae(x2, doc_start)
    for a, b in zip(out[:3], out2[:3]):
        assert torch.equal(a[:, start:], b[:, start:])
    return out


def assert_nothing_carried_into_a_document_start(sae: SAE, x_BTD: torch.Tensor, start: int = 10) -> None:
    """At a document start the effective code is the novel code, though the same position without one carries."""
    out = assert_document_start_resets(sae, x_BTD, start)
    assert torch.equal(out.codes[:, start], out.effective_codes[:, start])
    no_reset = sae(x_BTD, window_starts(*x_BTD.shape[:2]))
    assert not torch.equal(no_reset.codes[:, start], no_reset.effective_codes[:, start])


@pytest.fixture
def rules():
    """The contextual rules above, for the contextual SAEs' tests (conftest modules are not importable)."""
    return SimpleNamespace(strictly_causal=assert_strictly_causal, document_start_resets=assert_document_start_resets,
                           nothing_carried_into_a_document_start=assert_nothing_carried_into_a_document_start)
