"""Evaluate one trained SAE: glue between Hydra and ctxsae.eval.

    python evaluate.py run=outputs/runs/<date>/<time>_topk      (or run=.../sae.safetensors)
    python evaluate.py -m run=<dir a>,<dir b>                    (several runs, one after another)
    python evaluate.py run=<run dir> report=html                 (and the feature browser, <run>/browse/index.html)

Writes eval.json, eval.md and eval_heatmap_*.png into the run directory and logs the same figures
with the run's hyperparameters to its TensorBoard directory (tb/: the HParams view compares runs).
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from ctxsae.errors import entry_point
from ctxsae.eval.config import register_eval_config
from ctxsae.ranges import check_ranges

register_eval_config()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@entry_point
def main(cfg: DictConfig) -> float:
    from ctxsae.eval.run import evaluate_run

    check_ranges(cfg)
    cfg = OmegaConf.to_object(cfg)
    if cfg.report == "html":
        from ctxsae.browse import evaluate_and_browse

        evaluation, browser = evaluate_and_browse(cfg)
    else:
        evaluation, browser = evaluate_run(cfg), None
    run = evaluation.results["run"]
    print((open(f"{run['run_dir']}/eval.md").read().split("\n## ")[0]).rstrip())
    print(f"\n  full tables  {run['run_dir']}/eval.md  ({run['run_dir']}/eval.json)\n"
          f"  TensorBoard  tensorboard --logdir {run['run_dir']}")
    if browser is not None:
        print(f"  browser      {browser}")
    return evaluation.results["reconstruction"]["fvu"]


if __name__ == "__main__":
    main()
