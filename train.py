"""Train one SAE (or a sweep with -m): glue between Hydra and ctxsae.train.run.

    python train.py model=topk data=fortunes lm=smollm2
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ctxsae.config import register_configs
from ctxsae.errors import entry_point, unwrap
from ctxsae.ranges import check_ranges
from ctxsae.train.run_dir import RunDir

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@entry_point
def main(cfg: DictConfig) -> float:
    from ctxsae.train.run import format_summary, train

    check_ranges(cfg)  # a multirun job's own values (ctxsae.config.CheckRanges saw the shared config)
    run_dir = RunDir(Path(HydraConfig.get().runtime.output_dir))
    try:
        summary = train(cfg, run_dir)
    except Exception as e:
        cause = unwrap(e)
        run_dir.write(run_dir.failed, f"{type(cause).__name__}: {cause}\n")  # the sweep report lists it
        raise
    if summary is None:  # a non-zero DDP rank
        return float("nan")
    print(format_summary(summary))
    return summary["fvu"]


if __name__ == "__main__":
    main()
