"""Regenerate the golden run fixture: two tiny runs, their evaluation and their feature browser.

    .venv/bin/python tests/golden/make.py            # expected/ from the stored runs (after a deliberate change)
    .venv/bin/python tests/golden/make.py --runs     # retrain the stored runs too

``--runs`` trains a TopK and a recurrent SAE on the tiny LM over ``corpus.txt`` (keeping only config.yaml and
sae.safetensors, with paths written as ``@ROOT@``), then evaluates each with ``report=html`` and
writes the browser's compare page, and stores what came out under ``expected/``: eval.json without
timings and paths, eval.md without its timing lines, and every page of both sites.
``tests/golden/test_golden.py`` re-evaluates the stored runs and compares with ``expected/``: a
change that moves any figure or page must regenerate this fixture on purpose, in its own commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
RUNS = {"topk": [], "recurrent": ["model.retention_init=1.0"]}  # the recurrent run holds from the start


def corpus() -> str:
    return "\n".join(f"Line {i}: the quick brown fox <b>jumps</b> Съешь ещё 你好世界 over the dog {i}." for i in range(150))


def fortunes(root: Path) -> Path:
    (root / "de").mkdir(parents=True, exist_ok=True)
    (root / "fortunes").write_text("".join(f"Saying {i}: the early bird catches the worm, or so.\n%\n" for i in range(12)))
    (root / "de" / "sprueche").write_text("".join(f"Spruch {i}: Morgenstund hat Gold im Mund, sagt man.\n%\n" for i in range(12)))
    return root


def lay_out(work: Path) -> None:
    """corpus, fortunes and the stored runs under ``work``, paths resolved to it."""
    (work / "corpus.txt").write_text(corpus())
    fortunes(work / "fortunes")
    for name in RUNS:
        (work / name).mkdir()
        shutil.copy(HERE / "runs" / name / "sae.safetensors", work / name)
        text = (HERE / "runs" / name / "config.yaml").read_text().replace("@ROOT@", str(work))
        (work / name / "config.yaml").write_text(text)


def evaluate_and_browse(work: Path) -> None:
    for name in RUNS:
        subprocess.run([sys.executable, "evaluate.py", f"run={work / name}", "report=html", f"probe.root={work / 'fortunes'}",
                        "probe.pairs=[en-de]", "probe.n_windows=12", "heatmap_windows=1", "tensorboard=false"],
                       cwd=ROOT, env=ENV, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "ctxsae.browse", str(work / "recurrent"), "--compare", str(work / "topk"),
                    "--features", "6", "--windows", "3", "--probe-root", str(work / "fortunes"), "--probe-pairs", "en-de",
                    "--probe-windows", "12"], cwd=ROOT, env=ENV, check=True, capture_output=True)


def normalised(work: Path) -> dict[str, str]:
    """{relative path: text} of everything compared: eval.json/md without timings, the sites' pages; paths as @ROOT@."""
    import json

    files = {}
    for name in RUNS:
        r = json.loads((work / name / "eval.json").read_text())
        r.pop("seconds")
        files[f"{name}/eval.json"] = json.dumps(r, indent=1, sort_keys=True)
        md = (work / name / "eval.md").read_text()
        files[f"{name}/eval.md"] = "\n".join(line for line in md.splitlines() if "second" not in line)
        for page in sorted((work / name / "browse").glob("*.html")):
            files[f"{name}/browse/{page.name}"] = page.read_text(encoding="utf-8")
    return {k: v.replace(str(work), "@ROOT@") for k, v in files.items()}


def train_runs() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "corpus.txt").write_text(corpus())
        for name, overrides in RUNS.items():
            subprocess.run([
                sys.executable, "train.py", "lm=tiny", "data=local", f"data.source.data_files={work / 'corpus.txt'}",
                "data.n_ctx=64", "data.draw_windows=96", "data.batch_windows=8", f"model={name}", "model.d_sae=64",
                "model.k=6", f"cache.root={work / 'cache'}", "trainer.enable_progress_bar=false",
                "max_tokens=8192", "trainer.val_check_interval=100", "logger=csv", f"hydra.run.dir={work / name}",
                *overrides,
            ], cwd=ROOT, env=ENV, check=True, capture_output=True)
            out = HERE / "runs" / name
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / name / "sae.safetensors", out)
            (out / "config.yaml").write_text((work / name / "config.yaml").read_text().replace(str(work), "@ROOT@"))


def main() -> None:
    if "--runs" in sys.argv[1:]:
        train_runs()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lay_out(work)
        evaluate_and_browse(work)
        shutil.rmtree(HERE / "expected", ignore_errors=True)
        for rel, text in normalised(work).items():
            (HERE / "expected" / rel).parent.mkdir(parents=True, exist_ok=True)
            (HERE / "expected" / rel).write_text(text, encoding="utf-8")
    print(f"golden fixture written under {HERE}")


if __name__ == "__main__":
    main()
