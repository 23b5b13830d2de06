#!/usr/bin/env bash
# Issue 10's GPU figures in one call on a lent GPU machine (the `device` tool), everything under $OUT.
#
# Prepare here (the machine has no package index; it has torch, lightning, transformers, tensorboard):
#   ../shared/tools/device-wheels .whl hydra-core omegaconf nnsight datasets gguf eai-sparsify sae-lens
#   rm .whl/plotly-*.whl     # 9 MB SAELens does not import; the repo and .whl must stay under 64 MiB
# then run `bash scripts/device_check.sh` through the device tool with carry [".whl"] and a timeout of
# ~540 s (about 6 minutes of work on an H100). Without a GPU it runs the same figures on the CPU, minus
# issue 10's large shapes (a dry run of this script: OUT=/tmp/dc bash scripts/device_check.sh).
#
# Writes: machine.txt; tests.txt (the sparse backward and the recurrent step loop against their reference
# forms, on the GPU); bench.json / bench.txt (python -m ctxsae.bench: our TopK step against SAELens and
# sparsify, the roofline, the contextual steps against TopK's, train.py's loop against the bare step, and
# with a GPU the three shapes of issue 10); train.txt and train_summary.json (train.py on synthetic activations,
# precision auto).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/device}
mkdir -p "$out"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "the wheels in .whl did not install (built for the GPU machine's Python 3.12)" >&2
    export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
{ nvidia-smi 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$out/machine.txt" 2>&1

step() {  # name, command...: its output to $out/name.txt, how it ended to machine.txt; a failure does not stop the rest
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$out/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$out/machine.txt"
}

step tests $PY -m pytest -q -p no:cacheprovider tests/models/test_sparse_encoder.py \
    tests/models/test_recurrent.py::test_fast_step_loop_matches_the_reference_loop_exactly
shapes=$([ "$gpu" = 1 ] && echo issue || echo none)
step bench $PY -m ctxsae.bench --only saelens sparsify roofline contextual end_to_end shapes --shapes "$shapes" \
    --steps 7 --out "$out/bench.json"
# train.py end to end at issue 10's train.py shape (d_in 512, d_sae 16384, k 32, 8192-token batches)
step train $PY train.py data=synthetic data.source.d_in=512 data.source.n_windows=4096 data.source.n_ctx=64 \
    data.batch_windows=128 model=topk model.d_sae=16384 model.k=32 max_tokens=$([ "$gpu" = 1 ] && echo 8000000 || echo 65536) \
    cache.root=/tmp/device_check/cache hydra.run.dir=/tmp/device_check/train trainer.enable_progress_bar=false
cp /tmp/device_check/train/summary.json "$out/train_summary.json" 2>/dev/null  # the run itself stays there: 8 files come back at most
