import json

import pytest
from omegaconf import OmegaConf

from ctxsae.report.map import cell_summary, map_rows, ratio_along_training, write_map

TOPK, RECURRENT = "ctxsae.models.topk.TopKSAE", "ctxsae.models.recurrent.RecurrentSAE"
ATTENTION = "ctxsae.models.attention.AttentionSAE"
MEAN_ORACLE = "ctxsae.models.mean_oracle.MeanOracleSAE"
BOOK = "ctxsae.data.debian_reference.DebianReferenceSource"


def run(root, name, model, k, fvu, l0, l0_eff=None, layer=8, data=BOOK, evaluated=None, seed=0):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"model": {"_target_": model, "k": k, "d_sae": 64}, "lm": {"layer": layer, "site": "resid_post"},
           "data": {"source": {"_target_": data}, "n_ctx": 512}, "seed": seed}
    OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    (d / "summary.json").write_text(json.dumps({"model": model.rsplit(".", 1)[-1], "fvu": fvu, "l0": l0,
                                                "l0_effective": l0_eff or l0}))
    if evaluated:
        (d / "eval.json").write_text(json.dumps(evaluated))


def oracle(held_share, ce, document=0.1, residual=0.0):
    return {"persistence": {"already_active": 0.2, "changed_share_0.3": 0.85, "held_share_0.3": held_share, "fvu_held_0.3": 0.3},
            "region_bound": {"explained_document": document, "residual_explained_document": residual},
            "downstream": {"ce_recovered_zero": ce},
            "regions": {"kind/code": {"onset_precision": 0.4}}}


def test_each_cell_reads_its_contextual_runs_against_its_own_topk_front(tmp_path):
    sweep = tmp_path / "sweep"
    run(sweep, "t16", TOPK, 16, 0.3, 16.0, evaluated=oracle(0.9, 0.80))
    run(sweep, "t32", TOPK, 32, 0.2, 32.0, evaluated=oracle(0.8, 0.90, document=0.05, residual=0.025))
    run(sweep, "t64", TOPK, 64, 0.1, 64.0, evaluated=oracle(0.7, 0.96))
    run(sweep, "r16", RECURRENT, 16, 0.2, 16.0, l0_eff=40.0, evaluated={"downstream": {"ce_recovered_zero": 0.88}})
    # Reads 24 unsent values per position: novel L0 12 looks like 3/8 of the front's 32; paying for them costs 9/8.
    run(sweep, "a12", ATTENTION, 12, 0.2, 12.0, l0_eff=70.0, evaluated={"context": {"unsent_sources_per_position": 24.0}})
    # A bound, not a design: its decoder reads the document's mean for free. Lowest ratio (16 / 64), never the best arm.
    run(sweep, "o16", MEAN_ORACLE, 16, 0.1, 16.0)
    # Another layer: a front of its own, never mixed with layer 8's.
    run(sweep, "t16_L24", TOPK, 16, 0.5, 16.0, layer=24, evaluated=oracle(1.2, 0.5, document=-0.02))
    run(sweep, "t32_L24", TOPK, 32, 0.4, 32.0, layer=24)
    run(sweep, "r16_L24", RECURRENT, 16, 0.45, 16.0, layer=24)
    run(sweep, "t16_s1", TOPK, 16, 0.31, 16.0, seed=1)  # a second seed: a cell (and a front) of its own

    rows = {r["run"]: r for r in map_rows(sweep, "TopKSAE")}
    assert rows["r16"]["cell"] == "debian_reference-n512-L8" and rows["r16_L24"]["cell"] == "debian_reference-n512-L24"
    assert rows["r16"]["l0_ratio"] == pytest.approx(0.5) and rows["r16"]["l0_effective_ratio"] == pytest.approx(40 / 32)
    assert rows["r16"]["ce_delta"] == pytest.approx(-0.02)  # 0.88 against TopK's 0.90 at the same FVU
    assert rows["r16"]["l0_paid_ratio"] is None  # its context reads codes only: nothing unsent to pay for
    assert rows["a12"]["l0_ratio"] == pytest.approx(12 / 32) and rows["a12"]["l0_paid_ratio"] == pytest.approx(36 / 32)
    assert rows["r16_L24"]["l0_ratio"] == pytest.approx(2 ** -0.5)  # 16 over the front at 16 * sqrt(2) (halfway in log L0)
    assert rows["t16_s1"]["cell"] == "debian_reference-n512-L8-s1"
    assert rows["t32"]["held_share"] == 0.8 and rows["t32"]["onset_precision_code"] == 0.4

    summary = cell_summary("debian_reference-n512-L8", [r for r in rows.values() if r["cell"] == "debian_reference-n512-L8"], "TopKSAE")
    assert summary["topk_fvu"] == 0.2 and summary["best_arm"] == "AttentionSAE k=12"  # the lowest novel-L0 ratio...
    assert summary["mean_oracle_l0_ratio"] == pytest.approx(0.25)  # (the oracle's is lower: it is reported as a bound)
    assert summary["l0_paid_ratio"] == pytest.approx(36 / 32)  # ... not the lowest cost
    # A free region mean explaining 0.05 of the variance: the codes need only FVU 0.25, where the front has L0
    # 16 sqrt(2) (halfway from 32 to 16 in log L0).
    assert summary["region_l0_ratio"] == pytest.approx(2**-0.5)
    # What a region code could add to this dictionary: 0.025 of its residual, a quarter of the way to L0 16 in log L0.
    assert summary["residual_var_document"] == 0.025 and summary["residual_l0_ratio"] == pytest.approx(2**-0.25)
    assert cell_summary("L24", [r for r in rows.values() if r["layer"] == 24], "TopKSAE")["region_l0_ratio"] is None
    past = cell_summary("L24", [r | {"region_var_document": 0.2} for r in rows.values() if r["layer"] == 24], "TopKSAE")
    assert past["region_l0_ratio"] == "< 0.5"  # FVU 0.6 is past the sparsest run (k=16 at 0.5): below 16 / 32

    write_map(sweep, tmp_path / "docs")
    md = (tmp_path / "docs" / "results.md").read_text()
    assert "| debian_reference-n512-L8 | 0.2 | 0.85 | 0.8 | 0.05 |  | 0.7071 | 0.025 | 0.8409 | 0.25 | AttentionSAE k=12 | 0.375 | 2.188 | 1.125 |" in md.split("## ")[0]
    for png in ("changed_share_by_layer", "debian_reference-n512-L8", "debian_reference-n512-L24"):
        assert (tmp_path / "docs" / "map" / f"{png}.png").stat().st_size > 1000


def validation_points(job, points):
    """(tokens, val FVU, val L0) points written as the training logger writes them."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(job / "tb")) as writer:
        for tokens, fvu, l0 in points:
            for tag, value in (("val/fvu", fvu), ("val/l0", l0), ("val/l0_effective", l0)):
                writer.add_scalar(tag, value, tokens)


def test_the_ratio_along_training_reads_each_validation_point_against_the_front_at_the_same_tokens(tmp_path):
    sweep = tmp_path / "sweep"
    run(sweep, "t16", TOPK, 16, 0.3, 16.0)
    run(sweep, "t32", TOPK, 32, 0.2, 32.0)
    run(sweep, "o16", MEAN_ORACLE, 16, 0.28, 16.0)
    run(sweep, "t16_L24", TOPK, 16, 0.5, 16.0, layer=24)  # another cell: its front never enters layer 8's
    k = 1000
    validation_points(sweep / "t16", [(100 * k, 0.4, 16), (200 * k, 0.5, 16)])
    validation_points(sweep / "t16", [(200 * k, 0.3, 16)])  # resumed before 200k tokens: the later value stands
    validation_points(sweep / "t32", [(100 * k, 0.3, 32), (200 * k, 0.2, 32)])
    validation_points(sweep / "t16_L24", [(100 * k, 0.1, 16), (200 * k, 0.1, 16)])
    # halfway between the front's runs in FVU at 100k tokens (ratio 2^-0.5), a fifth of the way from k=16 at 200k
    # (2^-0.2), and at 300k no front to read it against
    validation_points(sweep / "o16", [(100 * k, 0.35, 16), (200 * k, 0.28, 16), (300 * k, 0.25, 16)])

    rows = [r for r in map_rows(sweep, "TopKSAE") if r["layer"] == 8]
    along = ratio_along_training(sweep, rows, "TopKSAE")
    assert along.keys() == {"o16"} and along["o16"] == {100 * k: pytest.approx(2**-0.5), 200 * k: pytest.approx(2**-0.2)}

    write_map(sweep, tmp_path / "docs")
    section = (tmp_path / "docs" / "results.md").read_text().split("## debian_reference-n512-L8\n")[1]
    assert "| run | arm | 0.10M | 0.20M |\n|---|---|---|---|\n| o16 | MeanOracleSAE k=16 | 0.7071 | 0.8706 |" in section
    assert (tmp_path / "docs" / "map" / "debian_reference-n512-L8-along_training.png").stat().st_size > 1000
    assert not (tmp_path / "docs" / "map" / "debian_reference-n512-L24-along_training.png").exists()  # no run to read there
