#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command (about 15 minutes on one H200, most of
# it compiling: 50-115 s a config):
#   bash benchmarks/gpu.sh [--dry-run] [RESULTS_FILE]
# bf16 train steps at 224 on this machine's GPUs, batch 128 per GPU: FCMAE Tiny (visible-only
# and dense emulation, each with XLA's and the shifted depthwise conv), FCMAE Base (both forms,
# XLA's conv), and a finetuning step of Tiny and Base. Each line: images/s, TFLOP/s per GPU,
# MFU, compile time, GFLOP per example, GiB per GPU; every result also goes to RESULTS_FILE as
# a JSON line. Install first: pip install -r requirements.txt "jax[cuda12]>=0.7,<0.13".
# --dry-run checks every line on any machine (the CPU too) at the smallest size (Atto at 64 px,
# blocks scanned, layer decay per block as Atto's depths need, 2 images per device): the first
# line compiles and runs one step, the others build their run and trace its step. The tests run
# it, so that this script works the first time a GPU machine runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
small=()
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  small=(--config.model.variant=atto --config.data.image_size=64 --config.model.scan=true
         --config.optim.layer_decay_scheme=single --warmup=0 --steps=1)
fi
lines=0
out=${1:-benchmarks/gpu-$(date +%Y-%m-%d).jsonl}
gpus=$("$python" -c "import jax; print(jax.device_count())")
batch=$(( ${#small[@]} ? 2 * gpus : 128 * gpus ))
if (( ! ${#small[@]} )); then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
run() {
  local check=()
  if (( ${#small[@]} && lines++ )); then check=(--trace_only); fi
  "$python" -m benchmarks.train_step --batch "$batch" --out "$out" "$@" "${small[@]}" "${check[@]}"
}
for form in sparse dense; do
  for conv in xla shift; do
    run --config configs/fcmae_tiny.py --config.fcmae.impl=$form --config.model.depthwise_impl=$conv
  done
done
for form in sparse dense; do
  run --config configs/fcmae_base.py --config.fcmae.impl=$form
done
run --config configs/finetune_tiny.py
run --config configs/finetune_base.py
echo "Results: $out"
