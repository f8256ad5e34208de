#!/usr/bin/env bash
# Ours beside PyTorch on this machine's GPU, in one command (made to fit 9 minutes on one H100 or
# H200, compiles included):
#   bash benchmarks/gpu.sh [--dry-run] [RESULTS_FILE]
# bf16 train steps at 224, batch 128 per GPU, each in its own process, in pairs on the same GPU:
# FCMAE-Base visible-only (ours) beside a dense FCMAE-Base step in PyTorch (timm's encoder with
# the official repository's masking, decoder and loss: benchmarks/torch_peer.py), then finetuning
# Base (ours, mixup, cutmix, label smoothing, random erasing and EMA off) beside timm's
# convnextv2_base (channels_last, bf16 autocast, torch.compile, fused AdamW). Each line: images/s,
# compile time apart from step time; every result also goes to RESULTS_FILE as a JSON line, and
# the table `ours / PyTorch` is printed at the end. Needs torch, timm, jax with its CUDA plugin,
# flax, optax, orbax; no internet.
# --dry-run checks every line on any machine (the CPU too) at the smallest size (Atto at 64 px,
# 2 images per device, one step): our lines build their run and trace its step (the first one
# compiles and runs it), the PyTorch lines run one step on the CPU without torch.compile (which
# takes minutes on a CPU). The tests run it, so that this script works the first time a GPU
# machine runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
small=()
peer_small=()
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  small=(--config.model.variant=atto --config.data.image_size=64 --config.model.scan=true
         --config.optim.layer_decay_scheme=single --warmup=0 --steps=1)
  peer_small=(--variant atto --image-size 64 --device cpu --no-compile --warmup 0 --steps 1)
fi
lines=0
out=${1:-benchmarks/gpu-$(date +%Y-%m-%d).jsonl}
gpus=$("$python" -c "import jax; print(jax.device_count())")
batch=$(( ${#small[@]} ? 2 * gpus : 128 * gpus ))
if (( ! ${#small[@]} )); then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
ours() {
  local check=()
  if (( ${#small[@]} && lines++ )); then check=(--trace_only); fi
  timeout 300 "$python" -m benchmarks.train_step --batch "$batch" --warmup 2 --steps 10 \
    --out "$out" "$@" "${small[@]}" "${check[@]}"
}
timm_imports=
peer() {
  # A dry run on a machine without timm (it needs a torchvision built for the installed torch;
  # none is installable beside a CPU torch here) checks our lines and says the peer's was skipped.
  if (( ${#small[@]} )) && [[ -z "$timm_imports" ]]; then  # asked once: importing torch takes seconds
    timm_imports=yes
    "$python" -c "from benchmarks import torch_peer; torch_peer.import_timm()" 2>/dev/null || timm_imports=no
  fi
  if [[ "$timm_imports" == no ]]; then
    echo "PyTorch peer --step $2 skipped: timm does not import here (pip install timm)."
    echo "{\"config\": \"torch $2 atto\", \"skipped\": \"timm does not import\"}" >> "$out"
    return
  fi
  timeout 240 "$python" -m benchmarks.torch_peer --batch $(( batch / gpus )) --out "$out" "$@" \
    "${peer_small[@]}"
}
ours --config configs/fcmae_base.py --config.fcmae.impl=sparse
peer --step fcmae
ours --config configs/finetune_base.py --config.aug.mixup=0 --config.aug.cutmix=0 \
  --config.aug.label_smoothing=0 --config.aug.reprob=0 --config.optim.ema_decay=0
peer --step finetune
"$python" - "$out" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])][-4:]
print("| step | ours img/s | PyTorch img/s | ours / PyTorch |\n|---|---|---|---|")
for name, (a, b) in zip(("FCMAE-Base (ours visible-only, PyTorch dense)", "finetuning Base"),
                        (rows[0:2], rows[2:4])):
  if "images_per_sec" in a and "images_per_sec" in b:
    print(f"| {name} | {a['images_per_sec']:,.0f} | {b['images_per_sec']:,.0f} | "
          f"{a['images_per_sec'] / b['images_per_sec']:.2f}x |")
  else:
    print(f"| {name} | traced only | {b.get('images_per_sec', 0):,.1f} | - |")
EOF
echo "Results: $out"
