#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one call on a GPU machine (about 6 minutes on an H100):
#   1. the celebahq-256 architecture (random weights), 2 epochs of 32 samples at bf16: samples/s for sampling
#      and training, peak GPU memory, and the re-scoring drift of the importance ratio;
#   2. the overhead ratios on that architecture (batch 8, 20 steps, bf16);
#   3. the tiny-preset sweep (all candidates at once on the one GPU).
# Figures go to stdout and to $RESULTS (default runs/gpu-session).
set -uo pipefail
results=${RESULTS:-runs/gpu-session}
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
timeout 240 python3 benchmarks/celebahq_throughput.py --epochs 2 --num-samples 32 --mixed-precision bf16 \
  --keep-base runs/celebahq-random --output "$results/celebahq_throughput.json"
timeout 100 python3 benchmarks/overhead.py --model runs/celebahq-random --batch-size 8 --num-steps 20 \
  --mixed-precision bf16 --repeats 2
(cd benchmarks && python3 tiny_sweep.py --output-dir ../runs/sweep --jobs 16 --time-limit 180) | tee "$results/tiny_sweep.md"
tar czf "$results/sweep_metrics.tgz" runs/sweep/*/metrics.jsonl runs/sweep/*/ddpo_config.json runs/sweep/*/train.log
