"""python -m ctxsae.browse <run> [--compare <baseline run>]: the feature browser of a run, in <run>/browse/.

Rebuilds the run's cache, held-out windows and LM from its config.yaml (as evaluate.py does) and
writes a static site that opens from disk: index.html, a page per feature, and with ``--compare``
compare.html, the baseline run and this one side by side on the same held-out windows.
"""

from __future__ import annotations

import argparse
import sys

from ctxsae.browse import write_run_site
from ctxsae.browse.site import BrowseConfig
from ctxsae.data.text import DEFAULT_SWITCH_PAIRS, FORTUNES_ROOT
from ctxsae.errors import entry_point
from ctxsae.eval.config import EvalConfig, ProbeConfig
from ctxsae.train.run_dir import open_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d, e = BrowseConfig(), EvalConfig()
    p = argparse.ArgumentParser(prog="python -m ctxsae.browse", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory of train.py (or its sae.safetensors)")
    p.add_argument("--compare", metavar="BASELINE",
                   help="a run trained on the same cache, shown side by side (compare.html)")
    p.add_argument("--features", type=int, default=d.n_features, help="pages for this many of the most active latents")
    p.add_argument("--feature", type=int, action="append", default=[],
                   help="a latent that gets a page too (repeatable)")
    p.add_argument("--windows", type=int, default=d.n_windows, help="top-activating held-out windows per feature page")
    p.add_argument("--compare-windows", type=int, default=d.compare_windows,
                   help="held-out windows on the compare page")
    p.add_argument("--held-out-windows", type=int, default=e.held_out_windows,
                   help="read the first N held-out windows (0: the whole val split)")
    p.add_argument("--batch-windows", type=int, default=e.batch_windows, help="windows per SAE / LM forward pass")
    p.add_argument("--probe-root", default=FORTUNES_ROOT, help="fortunes install for the language-switch probe")
    p.add_argument("--probe-pairs", default=",".join(DEFAULT_SWITCH_PAIRS),
                   help="language pairs of the probe, e.g. en-de,en-zh")
    p.add_argument("--probe-windows", type=int, default=ProbeConfig().n_windows,
                   help="switch windows of the probe (0: none)")
    p.add_argument("--device", default=e.device, help="auto (cuda if available) | cpu | cuda[:i]")
    return p.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    probe = ProbeConfig(n_windows=args.probe_windows, root=args.probe_root, pairs=args.probe_pairs.split(","))
    ev = EvalConfig(run=args.run, device=args.device, batch_windows=args.batch_windows,
                    held_out_windows=args.held_out_windows, probe=probe)
    cfg = BrowseConfig(n_features=args.features, features=args.feature, n_windows=args.windows,
                       compare_windows=args.compare_windows, eval=ev)
    run = open_run(args.run, args.device)
    baseline = open_run(args.compare, args.device, with_lm=False) if args.compare else None
    index = write_run_site(run, cfg, baseline)
    print(f"feature browser: {index}" + (f"\n  side by side:  {index.parent / 'compare.html'}" if baseline else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
