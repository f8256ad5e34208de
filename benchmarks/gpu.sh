#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command (a few minutes on one H100 / H200):
#   bash benchmarks/gpu.sh [RESULTS_FILE]
# bf16 train steps at 224 on this machine's GPUs, batch 128 per GPU: FCMAE Tiny (visible-only
# and dense emulation, each with XLA's and the shifted depthwise conv), FCMAE Base (both forms,
# XLA's conv), and a finetuning step of Tiny and Base. Each line: images/s, TFLOP/s per GPU,
# MFU, compile time, GFLOP per example, GiB per GPU; every result also goes to RESULTS_FILE as
# a JSON line. Install first: pip install -r requirements.txt "jax[cuda12]>=0.7,<0.13".
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/gpu-$(date +%Y-%m-%d).jsonl}
gpus=$(python -c "import jax; print(jax.device_count())")
batch=$((128 * gpus))
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
run() { python -m benchmarks.train_step --batch "$batch" --out "$out" "$@"; }
for form in sparse dense; do
  for conv in xla shift; do
    run --config configs/fcmae_tiny.py --set fcmae.impl=$form model.depthwise_impl=$conv
  done
done
for form in sparse dense; do
  run --config configs/fcmae_base.py --set fcmae.impl=$form
done
run --config configs/finetune_tiny.py
run --config configs/finetune_base.py
echo "Results: $out"
