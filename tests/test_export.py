"""python -m ctxsae.export on the stored tiny TopK run: out to SAELens, back in as a run, evaluated on the same cache."""

from __future__ import annotations

import json

import pytest
import torch

from ctxsae.evaluate import EvalConfig, held_out_pass, open_run
from ctxsae.export import main
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
    ev = EvalConfig(max_windows=4, batch_windows=4)
    original, imported = open_run(str(run), "cpu", with_lm=False), open_run(str(tmp_path / "imported"), "cpu", with_lm=False)
    assert float(imported.sae.act_scale) == 1.0 and imported.dm.cache.folder == original.dm.cache.folder
    a, _ = held_out_pass(original.sae, original.dm, ev)
    b, _ = held_out_pass(imported.sae, imported.dm, ev)
    assert a["reconstruction"]["fvu"] == pytest.approx(b["reconstruction"]["fvu"], rel=1e-4)
    assert a["sparsity"]["l0"] == pytest.approx(b["sparsity"]["l0"], rel=1e-4)
    with torch.no_grad():
        x_raw = torch.randn(2, 3, original.sae.d_in)
        torch.testing.assert_close(theirs.encode(x_raw), original.sae(original.sae.normalize(x_raw)).codes, rtol=1e-5, atol=1e-5)


def test_export_refuses_a_contextual_run_in_one_line(tmp_path, capsys):
    lay_out(tmp_path)
    assert main([str(tmp_path / "recurrent"), "--format", "saelens"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RecurrentSAE is contextual")
    assert not (tmp_path / "recurrent" / "saelens").exists()
