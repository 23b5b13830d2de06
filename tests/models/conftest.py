"""Shared by the per-token SAE tests: synthetic sparse data with a known dictionary, and measurements."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from ctxsae.data.synthetic import SyntheticConfig, generate
from ctxsae.metrics.basic import fvu, l0
from ctxsae.models.base import SAE, SAEConfig, load_sae


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
    out = sae.eval()(x_NTD)
    sae.train(was_training)
    return fvu(x_NTD, out.reconstruction).item(), l0(out.codes).item()


@pytest.fixture
def evaluate():
    return measure


def assert_round_trip(sae: SAE, cfg: SAEConfig, x_NTD: torch.Tensor, path) -> None:
    """SAE.save then load_sae rebuilds the same class with the same outputs (inference mode)."""
    sae.save(path, asdict(cfg))
    loaded, config = load_sae(path)
    assert type(loaded) is type(sae) and config == asdict(cfg)
    with torch.no_grad():
        a, b = sae.eval()(x_NTD), loaded.eval()(x_NTD)
    for field in ("codes", "effective_codes", "reconstruction"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)


@pytest.fixture
def round_trip():
    return assert_round_trip
