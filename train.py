"""Train one SAE (or a sweep with -m): glue between Hydra and ctxsae.train.run.

    python train.py model=topk data=fortunes lm=smollm2
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ctxsae.config import register_configs
from ctxsae.errors import UserError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from ctxsae.train.run import format_summary, train

    try:
        summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (UserError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(format_summary(summary))
    return summary["fvu"]


if __name__ == "__main__":
    main()
