"""extract.py: fills the cache that train.py with the same overrides then reuses, untouched."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_extract_then_train_reuses_the_cache(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(f"Line {i}: the quick brown fox, der schnelle Fuchs." for i in range(200)))
    shared = [
        "lm=tiny", "data=local", f"data.source.data_files={tmp_path / 'corpus.txt'}", "data.n_ctx=32",
        "data.draw_windows=64", "data.batch_windows=8", f"cache.root={tmp_path / 'cache'}",
    ]
    run_dirs = set(ROOT.glob("outputs/runs/*/*"))
    result = subprocess.run([sys.executable, "extract.py", *shared], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "activation cache ready: 64 windows of 32 tokens, d_in 64" in result.stdout
    (folder,) = (tmp_path / "cache").iterdir()
    manifest = folder / "manifest.json"
    assert json.loads(manifest.read_text())["complete"]
    written = manifest.stat().st_mtime_ns

    train = [sys.executable, "train.py", *shared, "model.d_sae=64", "model.k=4", "max_tokens=1024",
             "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(train, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cache"] == str(folder)
    assert manifest.stat().st_mtime_ns == written  # opened, not re-extracted
    # extract.py writes only the cache: no run directory, no Hydra log or .hydra folder
    assert set(ROOT.glob("outputs/runs/*/*")) == run_dirs
    assert not list(ROOT.glob("extract.log")) and not (ROOT / ".hydra").exists()


def test_extract_bad_input_is_one_line(tmp_path):
    args = [sys.executable, "extract.py", "lm=tiny", "data=local", f"data.source.data_files={tmp_path / 'none.txt'}",
            f"cache.root={tmp_path / 'cache'}"]
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: local data file(s) not found")
