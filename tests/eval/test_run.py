"""evaluate.py end to end (train.py then evaluate.py, tiny LM, local text, a fake fortunes install),
and the orchestration in-process on synthetic data (no LM)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from ctxsae.cache.store import CacheConfig
from ctxsae.data.synthetic import SyntheticSource
from ctxsae.errors import UserError
from ctxsae.eval.config import EvalConfig, ProbeConfig
from ctxsae.eval.probe import probe_texts
from ctxsae.eval.run import evaluate, evaluate_run
from ctxsae.extract.tiny import byte_tokenizer
from ctxsae.metrics import MetricsConfig, accumulate, held_out_accumulators
from ctxsae.metrics.language import switch_windows, with_controls
from ctxsae.metrics.basic import fvu
from ctxsae.models.base import ContextualSAE
from ctxsae.models.topk import TopKConfig, TopKSAE
from ctxsae.train.datamodule import ActivationDataModule, DataConfig
from ctxsae.train.run_dir import resolve_run

ROOT = Path(__file__).resolve().parents[2]
TEXT = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog. Der schnelle Fuchs {i}." for i in range(300))
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def fake_fortunes(root: Path) -> Path:
    """English (top level) and German (de/) fortune files, 12 entries each, in the Debian layout."""
    (root / "de").mkdir(parents=True)
    (root / "fortunes").write_text("".join(f"Fortune {i}: a stitch in time saves nine, they say.\n%\n" for i in range(12)))
    (root / "de" / "witze").write_text("".join(f"Witz {i}: wer zuletzt lacht, lacht am besten, sagt man.\n%\n" for i in range(12)))
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    (tmp / "corpus.txt").write_text(TEXT)
    train = [
        sys.executable, "train.py", "lm=tiny", "data=local", f"data.source.data_files={tmp / 'corpus.txt'}",
        "data.n_ctx=32", "data.draw_windows=128", "data.batch_windows=8", "model.d_sae=128", "model.k=8",
        f"cache.root={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}", "trainer.enable_progress_bar=false",
        "max_tokens=4096", "trainer.val_check_interval=10",
    ]
    result = subprocess.run(train, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    ev = [
        sys.executable, "evaluate.py", f"run={tmp / 'run'}", f"probe.root={fake_fortunes(tmp / 'fortunes')}",
        "probe.pairs=[en-de]", "probe.n_windows=12", "heatmap_windows=1",
    ]
    result = subprocess.run(ev, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "run", result.stdout


def test_evaluate_writes_json_markdown_figures(evaluated):
    run_dir, stdout = evaluated
    r = json.loads((run_dir / "eval.json").read_text())
    assert {"run", "reconstruction", "sparsity", "temporal", "context", "downstream", "language_switch",
            "synthetic", "skipped", "hparams", "figures", "seconds"} <= set(r)
    assert r["run"]["model"] == "TopKSAE" and r["run"]["evaluated_windows"] == r["run"]["val_windows"] > 0
    assert 0 <= r["reconstruction"]["fvu"] < 1.5 and r["sparsity"]["l0"] == pytest.approx(8, abs=0.5)
    d = r["downstream"]
    assert {"ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean", "kl_spliced"} <= set(d)
    assert d["kl_spliced"] > 0 and d["n_tokens"] == r["run"]["val_windows"] * 30  # 31 kept positions, the last unscored
    p = r["language_switch"]
    assert p["n_windows"] == p["n_control_windows"] == 12 and 0 <= p["auroc_heldout"] <= 1
    assert r["context"] is None and r["synthetic"] is None and "no context pathway" in r["skipped"]["context"]
    assert r["hparams"]["model"]["k"] == 8 and r["hparams"]["lm"]["layer"] == 1
    assert sorted(Path(f).name for f in r["figures"]) == ["eval_heatmap_switch.png", "eval_heatmap_val0.png"]
    assert all(Path(f).stat().st_size > 1000 for f in r["figures"])
    md = (run_dir / "eval.md").read_text()
    assert "| FVU |" in md and "## downstream" in md and "ce_recovered_zero" in md and "## language switch" in md
    assert "| FVU |" in stdout and "eval.md" in stdout
    # Each stage leaves one line with its count (the held-out and LM passes read every evaluated window).
    n = r["run"]["evaluated_windows"]
    stages = [line.split("━")[0].strip() for line in stdout.splitlines() if "━" in line]
    assert stages == ["held-out pass", "LM passes (CE, KL)", "language-switch probe", "heatmaps", "figures, TensorBoard"]
    assert stdout.count(f"{n}/{n} windows") == 2 and "24/24 windows" in stdout  # 12 switch windows and 12 controls
    assert set(r["seconds"]) == {"held_out", "downstream", "language_switch", "heatmaps", "figures", "total"}


def test_the_training_summary_reports_the_evaluations_figures(evaluated):
    run_dir, _ = evaluated
    summary, r = (json.loads((run_dir / f).read_text()) for f in ("summary.json", "eval.json"))
    assert summary["fvu"] == pytest.approx(r["reconstruction"]["fvu"], rel=1e-5)
    assert summary["l0"] == pytest.approx(r["sparsity"]["l0"]) and summary["l0_effective"] == pytest.approx(r["sparsity"]["l0_effective"])


def test_the_ablation_baselines_are_kept_in_the_cache_for_the_next_run(evaluated):
    run_dir, _ = evaluated
    r = json.loads((run_dir / "eval.json").read_text())
    (ablations,) = (run_dir.parent / "cache").rglob("downstream/ablations_*.json")
    sums = json.loads(ablations.read_text())
    assert sums["n"] == r["downstream"]["n_tokens"]
    assert sums["ce"]["zero"] / sums["n"] == r["downstream"]["ce_zero"]


def test_evaluate_logs_scalars_hparams_and_figures_to_tensorboard(evaluated):
    run_dir, _ = evaluated
    files = list((run_dir / "tb").glob("events.out.tfevents.*.eval"))
    assert len(files) == 1
    tags = {v.tag: v.metadata.plugin_data.plugin_name for ev in EventFileLoader(str(files[0])).Load() for v in ev.summary.value}
    assert tags["_hparams_/session_start_info"] == "hparams" and tags["_hparams_/experiment"] == "hparams"
    assert {"eval/reconstruction/fvu", "eval/downstream/ce_recovered_zero", "eval/language_switch/auroc_heldout"} <= set(tags)
    assert tags["eval/heatmap_val0"] == "images" and tags["eval/sparsity/log10_firing_frequency"] == "histograms"


class ContextTopK(TopKSAE, ContextualSAE):
    """A TopK SAE that reports a context statistic: the number of windows in the batch it saw."""

    def attribute(self, out, b, t, i):
        return [(t, out.codes[b, t, i].item())]

    def context_stats(self, out):
        return {"windows_in_batch": float(out.codes.shape[0])}


@pytest.fixture(scope="module")
def synthetic_dm(tmp_path_factory):
    source = SyntheticSource(d_in=16, n_windows=40, n_ctx=16, n_region_groups=2, group_size=2, n_token_features=16, seed=0)
    dm = ActivationDataModule(source, DataConfig(n_ctx=16, exclude_first=0, val_fraction=0.1),
                              CacheConfig(root=str(tmp_path_factory.mktemp("cache"))))
    dm.prepare_data()
    dm.setup()
    return dm


def test_synthetic_data_gets_ground_truth_figures_and_no_lm_figures(synthetic_dm):
    torch.manual_seed(0)
    sae = ContextTopK(TopKConfig(d_in=16, d_sae=32, k=4))
    sae.act_scale.fill_(synthetic_dm.scale)
    results, figures, _, _ = evaluate(sae, synthetic_dm, EvalConfig(batch_windows=3, heatmap_windows=1))
    assert results["downstream"] is None and results["language_switch"] is None
    assert "no LM" in results["skipped"]["downstream"]
    s = results["synthetic"]
    assert {"recovery", "gt_l0", "onset_decoder_precision", "gt_region_fire_share", "gt_region_coverage"} <= set(s)
    # val split: 4 windows in batches of 3 and 1, each statistic weighted by its batch's positions
    assert results["context"] == {"windows_in_batch": pytest.approx((3 * 3 + 1 * 1) / 4)}
    assert list(figures) == ["heatmap_val0"]


def test_the_held_out_pass_scores_exactly_the_held_out_windows(synthetic_dm):
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=16, d_sae=32, k=4))
    sae.act_scale.fill_(synthetic_dm.scale)
    batches = synthetic_dm.held_out_batches(batch_windows=3)
    r = accumulate(sae, batches, held_out_accumulators(sae, MetricsConfig()))
    val = synthetic_dm.dataset("val").__getitems__(list(range(len(synthetic_dm.val_idx))))
    with torch.no_grad():
        out = sae(val.x_BTD, val.doc_start_BT)
    assert r["reconstruction"]["fvu"] == pytest.approx(fvu(val.x_BTD, out.reconstruction, val.mask_BT).item(), rel=1e-5)
    assert r["sparsity"]["l0"] == pytest.approx(4) and r["sparsity"]["n_tokens"] == 4 * 16
    assert set(r) == {"reconstruction", "sparsity", "temporal"}  # per-token: no context pathway


def test_bad_run_paths_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        resolve_run(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="has not finished"):
        resolve_run(str(tmp_path))
    (tmp_path / "sae.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="no config.yaml"):
        resolve_run(str(tmp_path / "sae.safetensors"))


def test_an_sae_file_that_no_longer_fits_its_code_names_the_fix(tmp_path):
    sae = TopKSAE(TopKConfig(d_in=8, d_sae=16, k=2))
    sae.cfg.d_sae = 32  # the file says 32 latents, its weights hold 16
    sae.save(tmp_path / "sae.safetensors")
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match="does not fit the current code"):
        evaluate_run(EvalConfig(run=str(tmp_path)))


def test_missing_text_behind_a_run_is_one_line_naming_the_fix(evaluated, tmp_path):
    """The text source fails inside Hydra's instantiate; the user still sees our one-line error."""
    import shutil

    from omegaconf import OmegaConf

    run_dir, _ = evaluated
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    cfg = OmegaConf.load(moved / "config.yaml")
    cfg.data.source.data_files = str(tmp_path / "gone.txt")
    OmegaConf.save(cfg, moved / "config.yaml")
    result = subprocess.run([sys.executable, "evaluate.py", f"run={moved}"], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: local data file(s) not found")


def test_probe_switches_from_parallel_book_text_and_user_segments(tiny_book, tmp_path):
    segments = tmp_path / "segments.jsonl"
    segments.write_text("\n".join(json.dumps([{"text": f"Speaker one says {i}. ", "label": "alice"},
                                               {"text": f"And speaker two answers {i}.", "label": "bob"}]) for i in range(4)))
    for cfg in (ProbeConfig(source="debian_reference", book_root=str(tiny_book), pairs=["en-de", "de-en"], n_windows=8),
                ProbeConfig(source="segments", segments=str(segments), n_windows=8)):
        texts, joiner = probe_texts(cfg)
        w = switch_windows(with_controls(texts, joiner), byte_tokenizer(), n_ctx=64)
        assert (~w.control_N).sum() == len(texts) and len(texts) in (8, 4)
        for n in range(len(w.switch_N)):  # byte tokens: the switch token is exactly the first byte of B's text
            st = with_controls(texts, joiner)[int(w.source_N[n])]
            s = int(w.switch_N[n])
            b = st.text[st.switch_char :].encode()
            assert bytes(w.tokens_NT[n, s : s + 4].tolist()) == b[:4]
    with pytest.raises(UserError, match="probe.source"):
        probe_texts(ProbeConfig(source="segments"))
