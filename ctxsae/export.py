"""python -m ctxsae.export: SAEs out to SAELens, and SAELens SAEs in beside our runs.

    python -m ctxsae.export <run> --format saelens [--out DIR]                 default DIR: <run>/saelens
    python -m ctxsae.export saelens:<folder> --format run --like <run> --out DIR

The first writes ``cfg.json`` + ``sae_weights.safetensors`` that ``sae_lens.SAE.load_from_disk(DIR)``
opens: the run's activation scale folded into the weights (the SAE takes raw activations), the LM
and the hook named in its metadata in TransformerLens's spelling (``blocks.8.hook_resid_post``).
The second makes a run directory from a SAELens SAE and the config of a run here (its data, LM
and cache), so ``evaluate.py run=DIR`` and ``python -m ctxsae.browse <run> --compare DIR`` evaluate
and browse it on the same cache and held-out windows. The format itself: ``ctxsae.models.saelens``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import UserError, entry_point
from ctxsae.models import SAELENS_PREFIX, load_sae
from ctxsae.models.saelens import write_saelens
from ctxsae.train.run_dir import RunDir, resolve_run

#: Our hook sites in TransformerLens's hook names (SAELens's ``hook_name``).
TL_HOOKS = {"resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}


def saelens_metadata(train_cfg: DictConfig, run_dir: RunDir) -> dict:
    """What SAELens's metadata says about the activations: the LM, the hook, the window length, the data."""
    loader = OmegaConf.to_container(train_cfg.lm.loader, resolve=True) if "loader" in train_cfg.get("lm", {}) else None
    text = OmegaConf.select(train_cfg, "data.source._target_") or ""
    on_lm = loader is not None and not text.endswith("SyntheticSource")
    name = (loader.get("name_or_path") or Path(loader.get("gguf_file", "")).stem or loader["_target_"]) if on_lm else None
    return {
        "model_name": name,
        "hook_name": f"blocks.{train_cfg.lm.layer}.{TL_HOOKS[train_cfg.lm.site]}" if on_lm else None,
        "hook_head_index": None,
        "context_size": train_cfg.data.n_ctx,
        "prepend_bos": False,  # windows are cut from a token stream; documents are separated by BOS
        "dataset_path": text,
        "ctxsae_run": str(run_dir.path),
        "ctxsae_lm_loader": loader if on_lm else None,
    }


def export_saelens(run: str, out: str | None = None) -> Path:
    run_dir, sae_file = resolve_run(run)
    metadata = saelens_metadata(run_dir.load_config(), run_dir)
    return write_saelens(load_sae(sae_file), Path(out) if out else run_dir.path / "saelens", metadata)


def import_saelens(source: str, like: str | None, out: str | None) -> Path:
    """A run directory holding the SAELens SAE ``source`` with the data, LM and cache settings of run ``like``."""
    if not like or not out:
        raise UserError("--format run needs --like <run> (whose data, LM and cache to evaluate on) and --out DIR")
    like_dir, _ = resolve_run(like)
    sae = load_sae(source)
    train_cfg = like_dir.load_config()
    train_cfg.model = asdict(sae.cfg)
    out_dir = RunDir(out)
    out_dir.path.mkdir(parents=True, exist_ok=True)
    sae.save(out_dir.sae_file)
    out_dir.write(out_dir.config, OmegaConf.to_yaml(train_cfg))
    return out_dir.path


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctxsae.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a run directory (or its sae.safetensors), or saelens:<folder> with --format run")
    p.add_argument("--format", choices=("saelens", "run"), default="saelens",
                   help="saelens: a SAELens folder; run: a run directory evaluate.py and the browser read")
    p.add_argument("--out", help="the folder to write (default for saelens: <run>/saelens)")
    p.add_argument("--like", help="with --format run: the run whose data, LM and cache settings the new run takes")
    args = p.parse_args(argv)
    if args.format == "saelens":
        if args.source.startswith(SAELENS_PREFIX):
            raise UserError(f"{args.source} is a SAELens SAE already: pass a run directory, or --format run to import it")
        folder = export_saelens(args.source, args.out)
        print(f"SAELens SAE written: {folder}\n  open it with  sae_lens.SAE.load_from_disk({str(folder)!r})")
    else:
        if not args.source.startswith(SAELENS_PREFIX):
            raise UserError(f"--format run imports a SAELens SAE: pass {SAELENS_PREFIX}<folder>, not {args.source}")
        folder = import_saelens(args.source, args.like, args.out)
        print(f"run directory written: {folder}\n  evaluate it with  python evaluate.py run={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
