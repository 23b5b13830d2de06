"""Fill the activation cache without training: glue between Hydra and ctxsae.cache.

    python extract.py [data=...] [lm=...] [lm.layer=...]     (the same overrides as train.py)
    python extract.py lm.layers=[4,8,16,24]                  (one LM pass fills the caches of four layers)

Run it once before a sweep so every job finds the cache ready (jobs that start while it runs
wait on the cache's file lock and then reuse it). Takes train.py's config, so the cache key is
the one those training runs will look up.
"""

import hydra
from omegaconf import DictConfig

from ctxsae.config import register_configs
from ctxsae.errors import entry_point
from ctxsae.ranges import check_ranges

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
@entry_point
def main(cfg: DictConfig) -> None:
    from ctxsae.train.datamodule import fill_caches

    check_ranges(cfg)
    for cache in fill_caches(cfg):
        rate = cache.manifest.get("extract_tokens_per_s")
        layer = cache.manifest["fingerprint"]["source"].get("layer")
        print(f"activation cache ready: {cache.n_windows:,} windows of {cache.n_ctx} tokens, d_in {cache.d_in}"
              f"{f', layer {layer}' if layer is not None else ''}{f', extracted at {rate:.0f} tok/s' if rate else ''}\n  {cache.folder}")


if __name__ == "__main__":
    main()
