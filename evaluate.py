"""Evaluate one trained SAE: glue between Hydra and ctxsae.evaluate.

    python evaluate.py run=outputs/runs/<date>/<time>_topk      (or run=.../sae.safetensors)
    python evaluate.py -m run=<dir a>,<dir b>                    (several runs, one after another)
    python evaluate.py run=<run dir> report=html                 (and the feature browser, <run>/browse/index.html)

Writes eval.json, eval.md and eval_heatmap_*.png into the run directory and logs the same figures
with the run's hyperparameters to its TensorBoard directory (tb/: the HParams view compares runs).
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from ctxsae.config import exit_if_out_of_range
from ctxsae.errors import UserError, unwrap
from ctxsae.evaluate import register_eval_config

register_eval_config()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from ctxsae.evaluate import evaluate_run

    exit_if_out_of_range(cfg)
    try:
        results = evaluate_run(OmegaConf.to_object(cfg))
    except Exception as e:
        cause = unwrap(e)  # a data source or LM loader raises inside Hydra's instantiate
        if not isinstance(cause, UserError):
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    run_dir = results["run"]["run_dir"]
    print((open(f"{run_dir}/eval.md").read().split("\n## ")[0]).rstrip())
    print(f"\n  full tables  {run_dir}/eval.md  ({run_dir}/eval.json)\n  TensorBoard  tensorboard --logdir {run_dir}")
    if "browse" in results:
        print(f"  browser      {results['browse']}")
    return results["reconstruction"]["fvu"]


if __name__ == "__main__":
    main()
