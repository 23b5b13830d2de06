"""python -m ctxsae.export on the stored tiny TopK run: out to SAELens, back in as a run, evaluated on the same cache."""

from __future__ import annotations

import json

import pytest
import torch

from ctxsae.eval.config import EvalConfig
from ctxsae.eval.held_out import held_out_pass
from ctxsae.train.run_dir import open_run
from ctxsae.export import main
from ctxsae.models.base import window_starts
from tests.golden.make import lay_out


def test_run_exports_to_saelens_and_imports_back_with_the_same_held_out_figures(tmp_path, capsys):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install sae-lens)")
    lay_out(tmp_path)
    run = tmp_path / "topk"
    assert main([str(run), "--format", "saelens"]) == 0
    cfg = json.loads((run / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "ctxsae.extract.lm.load_tiny"
    theirs = sae_lens.SAE.load_from_disk(run / "saelens")
    assert theirs.cfg.k == cfg["k"]

    assert main([f"saelens:{run / 'saelens'}", "--format", "run", "--like", str(run), "--out", str(tmp_path / "imported")]) == 0
    ev = EvalConfig(held_out_windows=4, batch_windows=4)
    original, imported = open_run(str(run), "cpu", with_lm=False), open_run(str(tmp_path / "imported"), "cpu", with_lm=False)
    assert float(imported.sae.act_scale) == 1.0 and imported.dm.cache.folder == original.dm.cache.folder
    a, b = (held_out_pass(run.sae, run.dm, ev) for run in (original, imported))
    assert a["reconstruction"].compute()["fvu"] == pytest.approx(b["reconstruction"].compute()["fvu"], rel=1e-4)
    assert a["sparsity"].compute()["l0"] == pytest.approx(b["sparsity"].compute()["l0"], rel=1e-4)
    with torch.no_grad():
        x_raw = torch.randn(2, 3, original.sae.d_in)
        codes = original.sae(original.sae.normalize(x_raw), window_starts(2, 3)).codes
        torch.testing.assert_close(theirs.encode(x_raw), codes, rtol=1e-5, atol=1e-5)


def test_export_refuses_a_contextual_run_in_one_line(tmp_path, capsys):
    lay_out(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "recurrent"), "--format", "saelens"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RecurrentSAE is contextual")
    assert not (tmp_path / "recurrent" / "saelens").exists()
