"""train.py end to end in a subprocess, with the tiny random LM and a small local text file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctxsae.models import load_sae
from ctxsae.models.topk import TopKSAE
from tests.processes import OFFLINE, ROOT, kill_when

TEXT = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog. Der schnelle Fuchs {i}." for i in range(300))


def run(tmp_path: Path, *overrides: str, run_dir: str = "run", wait: bool = True, multirun: bool = False):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    args = [
        sys.executable, "train.py", *(["-m"] if multirun else []), "lm=tiny", "data=local", f"data.source.data_files={text}",
        "data.n_ctx=32", "data.draw_windows=128", "data.batch_windows=8", "model.d_sae=128", "model.k=8",
        f"cache.root={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / run_dir}",
        "trainer.enable_progress_bar=false", "max_tokens=8192", "trainer.val_check_interval=10", *overrides,
    ]
    if not wait:
        return subprocess.Popen(args, cwd=ROOT, env=OFFLINE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=300)


def test_train_writes_summary_tensorboard_events_and_sae(tmp_path):
    result = run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["l0"] == pytest.approx(8, abs=0.5) and 0 <= summary["fvu"] < 1.5
    assert "ctxsae run summary" in result.stdout and "held-out FVU" in result.stdout
    assert "Tip:" not in result.stdout + result.stderr and "LeafSpec" not in result.stderr  # third-party noise
    assert (summary["device"], summary["precision"]) == ("cpu", "32-true")  # precision=auto on a CPU
    # TensorBoard's step is training tokens: 256 per step (8 windows of 32), logged every 10 steps from step 9
    # (the model has then trained on 9 batches), validated at the end of the run's 8,192 tokens.
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/fvu")] == [9 * 256, 19 * 256, 29 * 256]
    assert events.Scalars("val/fvu")[-1].step == summary["train_tokens"] == 8192
    sae = load_sae(run_dir / "sae.safetensors")
    assert type(sae) is TopKSAE and (sae.d_in, sae.d_sae, sae.cfg.k) == (64, 128, 8)
    assert float(sae.act_scale) != 1.0  # the normalisation travels with the weights
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    overrides = ("max_tokens=200000", "callbacks.model_checkpoint.every_n_train_steps=5")
    proc = run(tmp_path, *overrides, wait=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    kill_when(proc, last.exists)
    import torch

    step_at_kill = torch.load(last, weights_only=False)["global_step"]
    result = run(tmp_path, "max_tokens=12000", "callbacks.model_checkpoint.every_n_train_steps=5", "trainer.enable_progress_bar=true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert step_at_kill > 0
    assert "Restoring states from the checkpoint" in result.stdout + result.stderr
    # The bar counts the run's tokens (47 steps of 256 for max_tokens=12000), not the batches of an epoch.
    assert "12,032/12,032 tok" in result.stdout and "Epoch" not in result.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.d_in=99", "model.d_in=99 but the activations have d_model 64"),
        ("lm.layer=5", "hook layer 5 is out of range"),
        ("optim.lr=1e30", "loss is"),
        ("data.n_ctx=100000", "position limit of 2048 tokens: lower data.n_ctx"),
    ],
)
def test_bad_input_ends_with_one_line_that_names_the_fix(tmp_path, override, message):
    result = run(tmp_path, override)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_config_typo_fails_at_start_up(tmp_path):
    result = run(tmp_path, "model.kk=3")
    assert result.returncode != 0 and "Key 'kk' not in 'TopKConfig'" in result.stderr
    assert not (tmp_path / "cache").exists()  # nothing ran


def test_submitit_local_multirun_shares_one_cache_and_reruns_skip_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ("hydra/launcher=local", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}",
                 "hydra.sweep.subdir=${hydra.job.num}", "model.k=4,8", "max_tokens=1024")
    result = run(tmp_path, *overrides, multirun=True)
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [round(s["l0"]) for s in summaries] == [4, 8]
    assert len({s["cache"] for s in summaries}) == 1 and len(list((tmp_path / "cache").iterdir())) == 1
    mtimes = [(sweep / str(i) / "sae.safetensors").stat().st_mtime_ns for i in (0, 1)]
    again = run(tmp_path, *overrides, multirun=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(sweep / str(i) / "sae.safetensors").stat().st_mtime_ns for i in (0, 1)] == mtimes  # not retrained


def test_ddp_on_two_cpu_processes(tmp_path):
    result = run(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "max_tokens=4096")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_tokens"] == 4096  # 8 steps of 2 processes x 8 windows x 32 tokens
    assert result.stdout.count("ctxsae run summary") == 1  # one process reports
