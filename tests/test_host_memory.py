"""keep_freed_memory: training steps reuse freed pages instead of faulting fresh ones in (counted, not timed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxsae.host_memory import is_allocator_setting, keep_freed_memory, on_glibc

# Three TopK steps after three warm-up steps, 4096 tokens x 2304 latents: each [tokens, d_sae]
# temporary is 38 MB, above the largest size glibc would serve from its heap by default.
STEPS = """
import resource, sys, torch
from ctxsae.bench import batch_of, train_step_fn
from ctxsae.host_memory import keep_freed_memory
from ctxsae.models.topk import TopKConfig, TopKSAE
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
step = train_step_fn(TopKSAE(TopKConfig(d_in=64, d_sae=2304, k=32)), batch_of(64, 4096, 128))
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_steps(mode: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not is_allocator_setting(k)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not on_glibc(), reason="glibc's allocator only")
def test_steps_reuse_freed_pages_where_glibc_would_fault_them_in_again():
    kept, faults_kept = page_faults_of_steps("keep")
    _, faults_default = page_faults_of_steps("default")
    assert kept
    if faults_default < 1000:
        pytest.skip(f"the kernel mapped these steps' memory with few faults ({faults_default}; huge pages?): nothing to compare")
    assert faults_kept < 0.05 * faults_default, (faults_kept, faults_default)


def test_the_users_allocator_settings_stand(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
