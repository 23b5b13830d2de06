"""Fill the activation cache without training: glue between Hydra and ctxsae.train.run.extract.

    python extract.py [data=...] [lm=...] [lm.layer=...]     (the same overrides as train.py)
    python extract.py lm.layers=[4,8,16,24]                  (one LM pass fills the caches of four layers)

Run it once before a sweep so every job finds the cache ready (jobs that start while it runs
wait on the cache's file lock and then reuse it). Takes train.py's config, so the cache key is
the one those training runs will look up.
"""

import sys

import hydra
from omegaconf import DictConfig

from ctxsae.config import register_configs
from ctxsae.errors import UserError, unwrap

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    from ctxsae.train.run import extract

    try:
        caches = extract(cfg)
    except Exception as e:
        cause = unwrap(e)
        if not isinstance(cause, UserError):
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    for cache in caches:
        rate = cache.manifest.get("extract_tokens_per_s")
        layer = cache.manifest["fingerprint"]["source"].get("layer")
        print(f"activation cache ready: {cache.n_windows:,} windows of {cache.n_ctx} tokens, d_in {cache.d_in}"
              f"{f', layer {layer}' if layer is not None else ''}{f', extracted at {rate:.0f} tok/s' if rate else ''}\n  {cache.folder}")


if __name__ == "__main__":
    main()
