#!/usr/bin/env bash
# Candidate base models for the `tiny` preset in one call on a lent GPU machine (4-7 minutes on an H100):
#   1. pretrain each candidate below with training/pretrain_base.py, all at once on the one GPU;
#   2. fine-tune each with the `tiny` preset (as `make demo` does, on the GPU);
#   3. `benchmarks/learning.py --trained-sampler-only` on each run (64 fixed seeds, base vs fine-tuned).
# Every candidate's UNet call costs within 10% of the bundled model's on the CPU (its full-resolution level
# sets that cost), so `make demo` could use it. Bases and logs go to $RESULTS (default runs/gpu-pretrain), one
# tarball per base (a lent machine sends back at most 8 files).
# A smoke test on the CPU: DEVICE=cpu STEPS=20 DDPO_FLAGS="--epochs 1 --num-samples 32" bash benchmarks/gpu_pretrain.sh
set -uo pipefail
results=${RESULTS:-runs/gpu-pretrain}
device=${DEVICE:-cuda}
mkdir -p "$results" runs/bases
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4

# SET=32 (the first call): the bundled model's size and first level, trained ~13x longer on more crops, and
# a wider 4x4 level. SET=48 (the second call): 48x48 images, where the JPEG header is a smaller share.
declare -A candidates
if [ "${SET:-48}" = 32 ]; then
  steps=${STEPS:-2500} time_limit=${TIME_LIMIT:-230}
  candidates=(
    [long-30k]="--num-images 30000 --batch-size 512 --learning-rate 1e-3"
    [long-60k]="--num-images 60000 --batch-size 512 --learning-rate 1e-3"
    [wide4x4-60k]="--num-images 60000 --batch-size 512 --learning-rate 1e-3 --channels 16 32 64 128"
  )
else
  steps=${STEPS:-2000} time_limit=${TIME_LIMIT:-200}
  candidates=(
    [textures-48]="--size 48 --channels 8 16 32 64 --num-images 60000 --batch-size 256 --learning-rate 1e-3"
    [textures-48-5lv]="--size 48 --channels 8 16 32 64 64 --num-images 60000 --batch-size 256 --learning-rate 1e-3"
  )
fi
logs=runs/gpu-pretrain-logs
mkdir -p "$logs"
for name in "${!candidates[@]}"; do
  # shellcheck disable=SC2086  # the flags are meant to split
  timeout $((time_limit + 80)) python3 -m ddpo_hub.training.pretrain_base --device "$device" --output-dir "runs/bases/$name" --steps "$steps" \
    --warmup-steps 200 --time-limit "$time_limit" --threads 6 ${candidates[$name]} \
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
  (timeout 100 python3 -m ddpo_hub.training --preset tiny --base-model "runs/bases/$name" --output-dir "runs/ddpo-$name" \
      --eval-num-images 0 ${DDPO_FLAGS:-} >"$logs/ddpo-$name.log" 2>&1 \
    && timeout 60 python3 benchmarks/learning.py "runs/ddpo-$name" --trained-sampler-only >"$logs/learning-$name.md" 2>&1) &
done
wait
for name in "${!candidates[@]}"; do
  echo "== $name"
  python3 -c "from training.run_folder import read_metrics
print('samples per epoch (B):', *(round(m['jpeg_bytes_mean']) for m in read_metrics('runs/ddpo-$name')))"
  grep "|" "$logs/learning-$name.md"
done
tar czf "$results/logs.tgz" "$logs" runs/ddpo-*/metrics.jsonl runs/ddpo-*/ddpo_config.json
