"""The harness runs end to end at tiny sizes and reports every figure; no timing is asserted."""

import json
import math

import pytest
import torch

from ctxsae.bench import RandomSource, batch_of, topk_flops, train_step_fn
from ctxsae.bench.__main__ import main
from ctxsae.models.topk import TopKConfig, TopKSAE
from tests.conftest import train_run

FIGURES = {"extraction", "multilayer", "cache", "saelens", "sparsify", "roofline", "contextual", "end_to_end", "memory"}


def test_quick_run_writes_every_figure_with_finite_ratios_or_skip_reasons(tmp_path):
    out = tmp_path / "bench.json"
    main(["--quick", "--d-in", "32", "--d-sae", "256", "--k", "4", "--batch-tokens", "64", "--n-ctx", "16",
          "--steps", "1", "--warmup", "0", "--lm-windows", "2", "--lm-batch-windows", "2", "--mem-windows", "8",
          "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["entries"]) == FIGURES
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["torch_threads"] >= 1
    for name, e in report["entries"].items():
        if e.get("skipped"):
            assert isinstance(e["skipped"], str) and e["skipped"], name
            assert not e["skipped"].startswith("error"), (name, e["skipped"])  # a bug, not a legitimate skip
        else:
            assert math.isfinite(e["ratio"]) and e["ratio"] > 0, name
            assert isinstance(e["met"], bool) and e["target"], name
    memory = report["entries"]["memory"]["detail"]
    assert [memory[f]["windows_read"] for f in ("1x", "4x", "16x")] == sorted(memory[f]["windows_read"] for f in ("1x", "4x", "16x"))


def test_training_step_updates_weights_and_keeps_decoder_rows_unit_norm():
    sae = TopKSAE(TopKConfig(d_in=16, d_sae=32, k=4))
    before = sae.W_enc.detach().clone()
    train_step_fn(sae, batch_of(16, 64, 8), lr=1e-2)()
    assert not torch.equal(before, sae.W_enc)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


def test_flop_count_and_random_source_shapes():
    # dense encoder forward, sparse encoder backward (k entries per row), sparse decoder forward and backward
    assert topk_flops(10, 4, 8, 2) == 2 * 10 * 4 * 8 + 2 * 10 * 2 * 4 + 6 * 10 * 2 * 4
    chunks = list(RandomSource(d_in=8, n_ctx=4, n_windows=5).chunks(0, 2))
    assert [len(c.x_NTD) for c in chunks] == [2, 2, 1] and chunks[0].doc_start_NT[:, 0].all()


def test_saelens_step_trains_when_sae_lens_is_installed():
    sae_lens = pytest.importorskip("sae_lens", reason="optional bench extra: pip install -e .[bench]")
    from ctxsae.bench import saelens_step_fn

    sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, device="cpu"))
    before = sae.W_enc.detach().clone()
    saelens_step_fn(sae, batch_of(16, 64, 8).x_BTD.flatten(0, 1), lr=1e-2)()
    assert not torch.equal(before, sae.W_enc)


def test_only_runs_the_named_figures(tmp_path):
    out = tmp_path / "bench.json"
    main(["--quick", "--d-in", "32", "--d-sae", "128", "--k", "4", "--batch-tokens", "32", "--n-ctx", "16",
          "--steps", "1", "--warmup", "0", "--only", "roofline", "sparsify", "--out", str(out)])
    entries = json.loads(out.read_text())["entries"]
    assert set(entries) == {"roofline", "sparsify"} and entries["roofline"]["detail"]["device"] in ("cpu", "cuda")


def train_synthetic(tmp_path, model: str, *overrides: str):
    return train_run(tmp_path / model, [
        "data=synthetic", "data.source.n_windows=160", "data.source.n_ctx=16", "data.batch_windows=8",
        f"model={model}", "model.d_sae=64", "model.k=4", f"cache.root={tmp_path / 'cache'}", "max_tokens=1024",
        "trainer.enable_progress_bar=false", "logger=csv", *overrides,
    ])


def test_trained_runs_are_timed_against_the_baseline_in_the_state_training_left(tmp_path):
    topk = train_synthetic(tmp_path, "topk")
    recurrent = train_synthetic(tmp_path, "recurrent", "model.retention_init=0.5", "model.learn_retention=false")
    out = tmp_path / "bench.json"
    main(["--only", "trained", "--runs", str(recurrent), str(topk), "--baseline", str(topk), "--steps", "1",
          "--warmup", "0", "--out", str(out)])
    e = json.loads(out.read_text())["entries"]["trained"]
    rec, base = e["detail"][str(recurrent)], e["detail"][str(topk)]
    assert e["detail"]["baseline"] == str(topk) and (rec["architecture"], base["architecture"]) == ("recurrent", "topk")
    assert rec["tokens"] == base["tokens"] == 8 * 16  # one batch of the run's data.batch_windows
    assert rec["l0"] == base["l0"] == base["l0_effective"] == 4
    assert rec["l0_effective"] > 4  # retention 0.5 holds codes: the state that was timed is the open one
    assert e["ratio"] == pytest.approx(rec["cost"] / 1.5) and base["target"] is None and base["met"] is None
    with pytest.raises(SystemExit):
        main(["--only", "trained", "--runs", str(recurrent)])  # no baseline to time it against
