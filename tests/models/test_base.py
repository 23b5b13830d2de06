"""The shared SAE base: the folded-bias encoder is the textbook one, gradients included; configs build
SAEs, saved files name their architecture (old files still load); contracts are declared; doc_start is
normalised once."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from ctxsae.errors import UserError
from ctxsae.models import ARCHITECTURES, build_sae, load_sae
from ctxsae.models.base import SAE, ContextualSAE, SAEConfig, window_starts
from ctxsae.models.recurrent import RecurrentConfig, RecurrentSAE
from ctxsae.models.topk import TopKConfig, TopKSAE


def test_pre_acts_and_their_gradients_equal_the_textbook_form():
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=16, d_sae=48, k=4)).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    g = torch.randn(3, 5, 48, dtype=torch.float64)
    params = (sae.W_enc, sae.b_enc, sae.b_dec)
    folded = torch.autograd.grad((sae.pre_acts(x) * g).sum(), params)
    textbook_pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    textbook = torch.autograd.grad((textbook_pre * g).sum(), params)
    torch.testing.assert_close(sae.pre_acts(x), textbook_pre)
    for a, b in zip(folded, textbook):
        torch.testing.assert_close(a, b)


# -- configs, the architecture registry and saved files -------------------------------------------------

GOLDEN_RUNS = Path(__file__).resolve().parents[1] / "golden" / "runs"


def small(name: str) -> SAE:
    """The ``name`` SAE at d_in 16, d_sae 64, its other fields at their defaults (TFA's q/k width made to fit)."""
    cls = ARCHITECTURES[name]
    return cls(cls.config_class(d_in=16, d_sae=64, **({"bottleneck_factor": 8} if name == "tfa" else {})))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_saves_its_name_and_loads_back(name, round_trip, tmp_path):
    torch.manual_seed(0)
    sae = small(name)
    assert sae.architecture == name
    round_trip(sae, torch.randn(2, 6, 16), tmp_path / "sae.safetensors")


def test_a_file_saved_before_the_registry_still_loads(tmp_path):
    """Old files name the class by module path in their config's _target_ and have no "architecture"."""
    torch.manual_seed(0)
    sae = RecurrentSAE(RecurrentConfig(d_in=16, d_sae=64, k=4, retention_init=0.5))
    old_config = {"_target_": "ctxsae.models.recurrent.RecurrentSAE", **asdict(sae.cfg)}
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"config": json.dumps(old_config)})
    loaded = load_sae(tmp_path / "old.safetensors")
    assert type(loaded) is RecurrentSAE and loaded.cfg == sae.cfg
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sae.state_dict().items())


@pytest.mark.parametrize("run, cls", [("topk", TopKSAE), ("recurrent", RecurrentSAE)])
def test_the_golden_runs_old_format_files_load(run, cls):
    sae = load_sae(GOLDEN_RUNS / run / "sae.safetensors")
    assert type(sae) is cls and (sae.d_in, sae.d_sae, sae.cfg.k) == (64, 64, 6) and float(sae.act_scale) != 1.0


def test_an_unknown_architecture_is_one_line_naming_the_fix(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "sae.safetensors"), metadata={"architecture": "gone", "config": "{}"})
    with pytest.raises(UserError, match="'gone' SAE.*from the commit it was trained with"):
        load_sae(tmp_path / "sae.safetensors")


@pytest.mark.parametrize("as_", ["dictconfig", "dict", "dataclass"])
def test_build_sae_reads_target_and_fields(as_):
    fields = {"_target_": "ctxsae.models.topk.TopKSAE", "d_in": 8, "d_sae": 16, "k": 3}
    config = {"dictconfig": OmegaConf.create(fields), "dict": fields, "dataclass": TopKConfig(d_in=8, d_sae=16, k=3)}[as_]
    torch.manual_seed(0)
    sae = build_sae(config)
    torch.manual_seed(0)
    direct = TopKSAE(TopKConfig(d_in=8, d_sae=16, k=3))
    assert type(sae) is TopKSAE and sae.cfg == direct.cfg
    assert all(torch.equal(sae.state_dict()[k], v) for k, v in direct.state_dict().items())  # same seed, same weights


def test_an_architecture_name_is_taken_once_and_unnamed_subclasses_are_not_saved(tmp_path):
    with pytest.raises(TypeError, match="already"):
        type("AnotherTopK", (TopKSAE,), {"architecture": "topk"})
    unnamed = type("UnnamedTopK", (TopKSAE,), {})(TopKConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(TypeError, match="no architecture of its own"):
        unnamed.save(tmp_path / "sae.safetensors")


# -- declared contracts ------------------------------------------------------------------------------------


def test_a_contextual_sae_must_say_how_to_read_its_context():
    class NoAttribution(TopKSAE, ContextualSAE):
        def context_stats(self, out):
            return {}

    with pytest.raises(TypeError, match="attribute"):
        NoAttribution(TopKConfig(d_in=8, d_sae=16, k=2))
    with pytest.raises(TypeError, match="forward"):
        SAE(SAEConfig(d_in=8, d_sae=16))
    assert [name for name, cls in sorted(ARCHITECTURES.items()) if issubclass(cls, ContextualSAE)] == ["attention", "document_mean", "mean_oracle", "recurrent", "region", "tfa"]


def test_doc_start_is_checked_and_normalised_before_forward():
    """forward receives a bool copy that is True at t = 0, whatever the caller passed."""
    class Recording(TopKSAE):
        def forward(self, x_BTD, doc_start_BT):
            self.seen = doc_start_BT
            return super().forward(x_BTD, doc_start_BT)

    sae, x = Recording(TopKConfig(d_in=8, d_sae=16, k=2)), torch.randn(2, 5, 8)
    given = torch.zeros(2, 5, dtype=torch.long)
    given[1, 3] = 1
    sae(x, given)
    expected = window_starts(2, 5)
    expected[1, 3] = True
    assert torch.equal(sae.seen, expected) and (given[:, 0] == 0).all()  # the caller's tensor is left alone
    with pytest.raises(ValueError, match=r"needs \[B, T\] = \(2, 5\)"):
        sae(x, window_starts(2, 4))


def test_a_window_start_is_a_document_start_for_contextual_saes():
    """A contextual SAE given no start at t = 0 computes exactly what it computes with one."""
    torch.manual_seed(0)
    sae = RecurrentSAE(RecurrentConfig(d_in=16, d_sae=64, k=4, retention_init=1.0))
    x, starts = torch.randn(2, 6, 16), window_starts(2, 6)
    starts[0, 3] = True
    unmarked = starts.clone()
    unmarked[:, 0] = False
    for a, b in zip(sae(x, starts)[:4], sae(x, unmarked)[:4]):
        assert torch.equal(a, b)
