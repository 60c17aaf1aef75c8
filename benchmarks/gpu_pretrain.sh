#!/usr/bin/env bash
# Candidate base models for the `tiny` preset in one call on a lent GPU machine (about 9 minutes on an H100):
#   1. pretrain each candidate below with training/pretrain_base.py, all at once on the one GPU;
#   2. fine-tune each with the `tiny` preset (as `make demo` does, on the GPU);
#   3. `benchmarks/learning.py --trained-sampler-only` on each run (64 fixed seeds, base vs fine-tuned).
# Each candidate keeps the UNet's 32x32 level as it is (16 channels), since that level sets the CPU cost of
# `make demo`. Bases, logs and figures go to $RESULTS (default runs/gpu-pretrain), one tarball per base.
# A smoke test on the CPU: DEVICE=cpu STEPS=20 DDPO_FLAGS="--epochs 1 --num-samples 32" bash benchmarks/gpu_pretrain.sh
set -uo pipefail
results=${RESULTS:-runs/gpu-pretrain}
steps=${STEPS:-2000}
device=${DEVICE:-cuda}
mkdir -p "$results" runs/bases
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4

# First call (32x32, the bundled model's size, 3 candidates at 3000 steps): --channels 16 32 64 64 with 30,000
# or 60,000 crops, and --channels 16 32 64 128 with 60,000; all --batch-size 512 --learning-rate 1e-3.
declare -A candidates=(
  [textures-48]="--size 48 --channels 8 16 32 64 --num-images 60000 --batch-size 256 --learning-rate 1e-3"
  [textures-48-5lv]="--size 48 --channels 8 16 32 64 64 --num-images 60000 --batch-size 256 --learning-rate 1e-3"
)
logs=runs/gpu-pretrain-logs
mkdir -p "$logs"
for name in "${!candidates[@]}"; do
  # shellcheck disable=SC2086  # the flags are meant to split
  timeout 280 python3 -m training.pretrain_base --device "$device" --output-dir "runs/bases/$name" --steps "$steps" \
    --warmup-steps 200 --time-limit "${TIME_LIMIT:-200}" --threads 6 ${candidates[$name]} \
    >"$logs/pretrain-$name.log" 2>&1 &
done
wait
for name in "${!candidates[@]}"; do
  grep -E "^(data set|UNet|step [0-9]+0{3}/|stopped|saved)" "$logs/pretrain-$name.log" | sed "s/^/$name: /"
  [ -f "runs/bases/$name/model_index.json" ] && tar czf "$results/base-$name.tgz" -C runs/bases "$name"
done

for name in "${!candidates[@]}"; do
  [ -f "runs/bases/$name/model_index.json" ] || continue
  # shellcheck disable=SC2086
  (timeout 100 python3 -m training --preset tiny --base-model "runs/bases/$name" --output-dir "runs/ddpo-$name" \
      --eval-num-images 0 ${DDPO_FLAGS:-} >"$logs/ddpo-$name.log" 2>&1 \
    && timeout 60 python3 benchmarks/learning.py "runs/ddpo-$name" --trained-sampler-only >"$logs/learning-$name.md" 2>&1) &
done
wait
for name in "${!candidates[@]}"; do
  echo "== $name"
  cat "runs/ddpo-$name/metrics.jsonl" 2>/dev/null | python3 -c "
import json, sys
print(' '.join(f\"{json.loads(line)['jpeg_bytes_mean']:.0f}\" for line in sys.stdin))"
  grep "|" "$logs/learning-$name.md"
done
tar czf "$results/logs.tgz" "$logs" runs/ddpo-*/metrics.jsonl runs/ddpo-*/ddpo_config.json
