#!/usr/bin/env bash
# The GPU figures of the celebahq-256 throughput work in one call on a lent GPU machine. Not yet run: an
# estimated 6-8 minutes on an H100 or H200 (a sweep setting ~30-60 s, the compiled one 2-3 min with its
# compilation). celebahq-256 architecture, random weights, bf16, DDIM 40 steps, 32 samples per timed epoch:
#   1. the sweep: UNet batches $SWEEP (default 8 16 32), eager with channels_last + TF32: samples/s for sampling
#      and training, TFLOP/s and the fraction of the device's bf16 peak, peak memory, syncs per step, drift;
#   2. old vs new: the preset as it is (UNet batch 4, eager, no channels_last or TF32) against UNet batch
#      $NEW_BATCH (default 16; accumulation keeps 16 samples per update) + channels_last + TF32 + --compile.
# Each setting's figures are printed as one JSON line as soon as measured, then both tables at the end; all of it
# goes to $RESULTS (default runs/gpu-session). ALL=1 also runs the earlier figures (overhead ratios, tiny sweep).
set -uo pipefail
results=${RESULTS:-runs/gpu-session}
mkdir -p "$results"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! python3 -c "import ddpo_hub.training" 2>/dev/null; then
  # Not installed there: ddpo_hub is a namespace package, so links to the source folders make it importable.
  links=$(mktemp -d)
  mkdir -p "$links/ddpo_hub"
  for part in training model_card space; do ln -s "$PWD/$part" "$links/ddpo_hub/$part"; done
  export PYTHONPATH=$links${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)"
python3 -c "import triton; print('triton', triton.__version__)" || echo "no triton: --compile will be a logged no-op"
# shellcheck disable=SC2086  # $SWEEP is a list of batch sizes
timeout 560 python3 benchmarks/celebahq_throughput.py --sweep ${SWEEP:-8 16 32} --new-batch "${NEW_BATCH:-16}" \
  --num-samples 32 --mixed-precision bf16 --keep-base runs/celebahq-random \
  --output "$results/celebahq_throughput.json" 2>&1 | tee "$results/celebahq_throughput.log"
if [ "${ALL:-0}" = 1 ]; then
  timeout 100 python3 benchmarks/overhead.py --model runs/celebahq-random --batch-size 8 --num-steps 20 \
    --mixed-precision bf16 --repeats 2
  (cd benchmarks && python3 tiny_sweep.py --output-dir ../runs/sweep --jobs 16 --time-limit 180) | tee "$results/tiny_sweep.md"
  tar czf "$results/sweep_metrics.tgz" runs/sweep/*/metrics.jsonl runs/sweep/*/ddpo_config.json runs/sweep/*/train.log
fi
