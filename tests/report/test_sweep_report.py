import csv
import json

import pytest
from omegaconf import OmegaConf

from ctxsae.report.sweep import matched_l0, report


def job(root, name, model="ctxsae.models.topk.TopKSAE", k=8, summary=None, failed=None, launched_only=False, data="a"):
    d = root / name
    cfg = OmegaConf.create({"model": {"_target_": model, "k": k, "d_sae": 64}, "loss": {"sparsity": 0.0}, "lm": {"layer": 1},
                            "data": {"source": data}})
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    if not launched_only:
        OmegaConf.save(cfg, d / "config.yaml")
    if summary:
        (d / "summary.json").write_text(json.dumps(summary))
    if failed:
        (d / "failed.txt").write_text(failed)


def test_every_run_is_a_row_with_its_status_and_figures(tmp_path):
    job(tmp_path, "a", summary={"model": "TopKSAE", "fvu": 0.2, "l0": 8.0, "l0_effective": 8.0, "train_tokens_per_s": 1e4})
    job(tmp_path, "b", k=16, summary={"model": "TopKSAE", "fvu": 0.1, "l0": 16.0, "l0_effective": 16.0, "train_tokens_per_s": 1e4})
    (tmp_path / "b" / "eval.json").write_text(json.dumps({"downstream": {"ce_recovered_zero": 0.9}}))
    job(tmp_path, "c", model="ctxsae.models.relu.ReLUSAE", failed="FloatingPointError: loss is nan")
    job(tmp_path, "d", launched_only=True)

    rows = {r["run"]: r for r in report(tmp_path)}
    assert rows["a"]["status"] == "finished" and rows["a"]["fvu"] == 0.2 and rows["a"]["k"] == 8
    assert rows["b"]["ce_recovered"] == 0.9 and rows["a"]["ce_recovered"] is None
    assert rows["c"]["status"].startswith("failed: FloatingPointError") and rows["c"]["model"] == "ReLUSAE"
    assert rows["d"]["status"] == "unfinished"
    with open(tmp_path / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    md = (tmp_path / "report.md").read_text()
    assert md.count("\n") == 6 and "failed: FloatingPointError" in md
    assert (tmp_path / "pareto_l0_fvu.png").stat().st_size > 1000
    assert list((tmp_path / "tb_report").glob("events.out.tfevents.*"))


def test_l0_is_matched_against_the_baseline_front_at_equal_fvu(tmp_path):
    for name, fvu, l0 in (("t8", 0.2, 8.0), ("t32", 0.1, 32.0), ("t16_worse", 0.25, 16.0)):
        job(tmp_path, name, summary={"model": "TopKSAE", "fvu": fvu, "l0": l0, "l0_effective": l0})
    recurrent = "ctxsae.models.recurrent.RecurrentSAE"
    job(tmp_path, "r", model=recurrent, summary={"model": "RecurrentSAE", "fvu": 0.15, "l0": 4.0, "l0_effective": 12.0})
    job(tmp_path, "r_far", model=recurrent, summary={"model": "RecurrentSAE", "fvu": 0.3, "l0": 2.0, "l0_effective": 2.0})
    # Other data: its own baseline front (which would move r's match if settings were mixed).
    job(tmp_path, "t_b", data="b", summary={"model": "TopKSAE", "fvu": 0.15, "l0": 4.0, "l0_effective": 4.0})
    job(tmp_path, "t_b2", data="b", summary={"model": "TopKSAE", "fvu": 0.35, "l0": 1.0, "l0_effective": 1.0})
    job(tmp_path, "r_b", data="b", model=recurrent, summary={"model": "RecurrentSAE", "fvu": 0.3, "l0": 2.0, "l0_effective": 2.0})
    OmegaConf.save({"hydra": {"runtime": {"choices": {"ablation": "recurrent_fixed"}}}}, tmp_path / "r" / ".hydra" / "hydra.yaml")

    rows = report(tmp_path)
    matched = {m["run"]: m for m in matched_l0(rows)}
    assert set(matched) == {"r", "r_far", "r_b"}  # baseline runs are not matched against themselves
    assert matched["r"]["group"] == "RecurrentSAE (recurrent_fixed)"
    assert matched["r"]["baseline_l0"] == pytest.approx(16.0)  # halfway between 8 and 32 in log L0
    assert matched["r"]["l0_ratio"] == pytest.approx(0.25) and matched["r"]["l0_effective_ratio"] == pytest.approx(0.75)
    assert matched["r_far"]["baseline_l0"] is None  # outside the front of its setting: no extrapolation
    assert matched["r_b"]["baseline_l0"] == pytest.approx(4.0 ** 0.25)  # 3/4 of the way from 4 to 1 in log L0
    assert "L0 at matched FVU" in (tmp_path / "report.md").read_text()


def test_a_loss_or_model_field_chosen_apart_from_the_model_is_its_own_curve(tmp_path):
    matryoshka = "ctxsae.models.matryoshka.MatryoshkaSAE"
    for name, overrides in (("m", ["model=matryoshka", "model.k=8", "model.d_sae=64"]),
                            ("m_tc", ["model=matryoshka", "loss=temporal_contrastive"]),
                            ("m_g", ["model=matryoshka", "model.k=8", "model.prefix_fractions=[0.5]"])):
        job(tmp_path, name, model=matryoshka, summary={"model": "MatryoshkaSAE", "fvu": 0.2, "l0": 8.0, "l0_effective": 8.0})
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / name / ".hydra" / "overrides.yaml")
    groups = {r["run"]: r["group"] for r in report(tmp_path)}
    assert groups == {"m": "MatryoshkaSAE", "m_tc": "MatryoshkaSAE (loss=temporal_contrastive)",
                      "m_g": "MatryoshkaSAE (prefix_fractions=[0.5])"}
