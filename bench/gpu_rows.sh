#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one short run (~8 min on one H100/H200 after start-up).
#
#   make device-wheels        # here, once: diffusers (+ importlib_metadata) wheels into .whl/ (git-ignored)
#   bash bench/gpu_rows.sh    # on the GPU machine, from the repo root; tables go to $OUT (default bench_out/)
#
# The GPU image this was written for has torch, accelerate, transformers, pillow and tqdm but not diffusers; the
# wheels in .whl/ are installed into /tmp/site only when diffusers is missing. Full-size SD3.5-medium architecture,
# random weights (no download), 1024 px, bf16 autocast with fp32 master weights. DeepSpeed rows are not run here.
set -euo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PRESET=${PRESET:-sd35-medium}  # PRESET=demo checks this script on a CPU
PHOTOS=${PHOTOS:-/tmp/photos}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, '| diffusers', diffusers.__version__)"; } \
    | tee "$OUT/machine.txt"

# Training: batch 1 and 4, gradient checkpointing off/on, cached latents (what trainer.py does with
# cache_latents: true); then the uncached step once, for the cached/uncached ratio; then torch.compile at batch 1.
[ -n "${SKIP_TRAIN:-}" ] || python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 4 --gradient_checkpointing off on \
    --compile off --cache_latents on 2>&1 | tee "$OUT/train.md"
[ -n "${SKIP_TRAIN:-}" ] || python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 --gradient_checkpointing off \
    --compile off --cache_latents on off 2>&1 | tee "$OUT/train_cache.md"
[ -n "${SKIP_TRAIN:-}" ] || python3 -m bench.train_throughput --preset "$PRESET" --batch_sizes 1 --gradient_checkpointing off \
    --compile on --cache_latents on 2>&1 | tee "$OUT/train_compile.md"

# Inference end to end on photo-sized JPEGs (synthetic scenes upscaled to 1024x768: load and PNG costs as real).
python3 - "$PHOTOS" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dataset.synthetic import EASY, HARD, render_scene

rng = np.random.default_rng(0)
for subset, difficulty in (("easy", EASY), ("hard", HARD)):
    root = Path(sys.argv[1]) / "test" / subset
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(32):
        image, mask = render_scene(rng, difficulty)
        Image.fromarray(image).resize((1024, 768), Image.BICUBIC).save(root / "images" / f"{index:04d}.jpg", quality=90)
        Image.fromarray(mask).resize((1024, 768), Image.NEAREST).save(root / "masks" / f"{index:04d}_mask.png")
PY
python3 -m bench.inference_throughput --preset "$PRESET" --data_dir "$PHOTOS" --batch_sizes 1 4 8 \
    --writer sync async --repeats 2 2>&1 | tee "$OUT/inference.md"
echo "tables in $OUT/"
