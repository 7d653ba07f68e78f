#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one short run (~8 min on one H100/H200 after start-up).
#
#   make device-wheels        # here, once: diffusers and deepspeed wheels into .whl/ (git-ignored, 11 MB)
#   bash bench/gpu_rows.sh    # on the GPU machine, from the repo root; tables go to $OUT (default bench_out/)
#
# The GPU image this was written for has torch, accelerate, transformers, pillow and tqdm but not diffusers or
# deepspeed; the wheels in .whl/ are installed into /tmp/site when either is missing. Full-size SD3.5-medium
# architecture, random weights (no download), 1024 px, bf16 autocast with fp32 master weights.
set -euo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
if ! python3 -c "import diffusers, deepspeed" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PRESET=${PRESET:-sd35-medium}  # PRESET=demo checks this script on a CPU
PHOTOS=${PHOTOS:-/tmp/photos}

# One table per step; a failing step is recorded in failed.txt and the others still run.
step() {
    local name=$1
    shift
    if [ -n "${SKIP_TRAIN:-}" ] && [ "$name" != inference ]; then return; fi
    "$@" 2>&1 | tee "$OUT/$name.md" || echo "$name: exit $?" | tee -a "$OUT/failed.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, '| diffusers', diffusers.__version__)"; } \
    | tee "$OUT/machine.txt"

# Training: batch 1 and 4, gradient checkpointing off/on, cached latents (what trainer.py does with
# cache_latents: true); then the uncached step once, for the cached/uncached ratio; then torch.compile at batch 1.
step train python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 4 --gradient_checkpointing off on \
    --compile off --cache_latents on
step train_cache python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 --gradient_checkpointing off \
    --compile off --cache_latents on off
step train_compile python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 --gradient_checkpointing off \
    --compile on --cache_latents on
# LoRA (trainer.py --train_mode lora: frozen bf16 base, fp32 rank-32 adapters), batch 1, checkpointing off/on: step
# time and peak memory against the 16 GB target (two rows, ~1 min with the model builds).
step train_lora python3 -m bench.train_throughput --preset "$PRESET" --train_mode lora --lora_rank 32 --batch_sizes 1 \
    --gradient_checkpointing off on --compile off --cache_latents on
# ZeRO-2 + CPU optimizer offload (DeepSpeedCPUAdam; its op compiles on first use, ~1 min): peak per process.
step zero2_offload python3 -m bench.zero2_offload_memory --preset "$PRESET" --batch_sizes 1 \
    --gradient_checkpointing off on

# Inference end to end on photo-sized JPEGs (synthetic scenes upscaled to 1024x768: load and PNG costs as real).
python3 - "$PHOTOS" <<'PY'
import sys

import numpy as np

from dataset.synthetic import EASY, HARD, make_split_dir, write_scene

rng = np.random.default_rng(0)
for subset, difficulty in (("easy", EASY), ("hard", HARD)):
    folder = make_split_dir(sys.argv[1], "test", subset)
    for index in range(32):
        write_scene(folder, f"{index:04d}", rng, difficulty, size=(1024, 768), quality=90)
PY
step inference python3 -m bench.inference_throughput --preset "$PRESET" --data_dir "$PHOTOS" --batch_sizes 1 4 8 \
    --writer sync async --repeats 2
# The full-size architecture through the real val_inference.py and predict.py at 1024 px, bf16 (builds a 5.6 GiB
# random-weight hub-layout folder first, ~75 s). Opt-in: SMOKE=1, when the loan has ~3 minutes to spare.
if [ -n "${SMOKE:-}" ]; then
    step full_size_smoke python3 bench/full_size_smoke.py --device cuda --images 8 --workdir /tmp/full_size_smoke
fi
echo "tables in $OUT/"
