"""Train one SAE (or a sweep with -m): glue between Hydra and ctxsae.train.run.

    python train.py model=topk data=fortunes lm=smollm2
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ctxsae.config import exit_if_out_of_range, register_configs
from ctxsae.errors import UserError, unwrap

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from ctxsae.train.run import format_summary, train

    exit_if_out_of_range(cfg)  # a multirun job's own values (CheckRanges saw the shared config)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = train(cfg, run_dir)
    except Exception as e:
        cause = unwrap(e)
        (run_dir / "failed.txt").write_text(f"{type(cause).__name__}: {cause}\n")  # the sweep report lists it
        if not isinstance(cause, (UserError, FloatingPointError)):
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    if summary is None:  # a non-zero DDP rank
        return float("nan")
    print(format_summary(summary))
    return summary["fvu"]


if __name__ == "__main__":
    main()
