"""extract.py: fills the cache that train.py with the same overrides then reuses, untouched."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.processes import OFFLINE as ENV, ROOT, kill_when


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


def extract_args(tmp_path: Path, cache_root: str) -> list[str]:
    """extract.py's overrides for two layers of the tiny LM: 48 windows in 12 shards of 4, in both layers' caches."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():  # written once: the cache key holds the file's modification time
        corpus.write_text("\n".join(f"Line {i}: the quick brown fox, der schnelle Fuchs." for i in range(200)))
    return ["lm=tiny", "lm.layers=[0,1]", "lm.batch_windows=4", "data=local", f"data.source.data_files={corpus}",
            "data.n_ctx=32", "data.draw_windows=48", f"cache.root={tmp_path / cache_root}", "cache.shard_windows=4"]


def manifests(root: Path) -> dict[str, dict]:
    """The manifest of each cache under ``root``, by cache folder name."""
    return {m.parent.name: json.loads(m.read_text()) for m in root.glob("*/manifest.json")}


def test_extraction_killed_mid_way_resumes_to_the_cache_of_an_uninterrupted_one_bitwise(tmp_path):
    from hydra import compose, initialize_config_dir

    from ctxsae.config import register_configs
    from ctxsae.train.datamodule import fill_caches

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        fill_caches(compose("extract", overrides=extract_args(tmp_path, "whole")))  # what extract.py runs, uninterrupted

    args = [sys.executable, "extract.py", *extract_args(tmp_path, "killed")]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_when(proc, lambda: any(m["shards"] for m in manifests(tmp_path / "killed").values()))
    written = [len(m["shards"]) for m in manifests(tmp_path / "killed").values()]
    assert not all(m["complete"] for m in manifests(tmp_path / "killed").values()), f"killed after {written} shards: too late"

    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    whole, resumed = manifests(tmp_path / "whole"), manifests(tmp_path / "killed")
    assert resumed.keys() == whole.keys() and len(whole) == 2  # the same two caches (one per layer)
    for name, want in whole.items():
        assert len(want["shards"]) == 12 and resumed[name]["shards"] == want["shards"]  # names, sizes and checksums
        for array in sorted(p.name for p in (tmp_path / "whole" / name).glob("shard_*.npy")):
            np.testing.assert_array_equal(np.load(tmp_path / "killed" / name / array),
                                          np.load(tmp_path / "whole" / name / array), err_msg=array)
