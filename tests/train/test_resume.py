"""Exact resume: a training run killed with SIGKILL and rerun ends with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.processes import kill_when
from tests.test_train import run

# 15 batches per epoch of 8 windows: the run crosses epochs, and a checkpoint falls mid-epoch.
LONG = ("max_tokens=20480", "callbacks.model_checkpoint.every_n_train_steps=7", "trainer.val_check_interval=1000", "seed=3")


def test_killed_run_resumed_gives_the_weights_of_an_uninterrupted_run_bitwise(tmp_path):
    whole = run(tmp_path, *LONG, run_dir="whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr

    proc = run(tmp_path, *LONG, run_dir="killed", wait=False)
    ckpts = tmp_path / "killed" / "checkpoints"
    kill_when(proc, (ckpts / "last.ckpt").exists)
    step = torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < step < 80 and step % 15 != 0, f"killed at step {step}: not mid-epoch and mid-run"

    resumed = run(tmp_path, *LONG, run_dir="killed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stdout + resumed.stderr
    a, b = load_file(tmp_path / "whole" / "sae.safetensors"), load_file(tmp_path / "killed" / "sae.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after the resume"
