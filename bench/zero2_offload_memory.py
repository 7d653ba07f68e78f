"""Peak GPU memory of a ZeRO-2 + CPU optimizer offload training step (configs/deepspeed/zero2_offload.json).

    python -m bench.zero2_offload_memory --preset sd35-medium                    # one GPU: an upper bound per GPU
    torchrun --nproc_per_node 4 -m bench.zero2_offload_memory --preset sd35-medium   # the 4-GPU layout itself
    python -m bench.zero2_offload_memory --preset demo                           # checks the script on a CPU (gloo)

The step is the trainer's under DeepSpeed: cached latents in, transformer forward (bf16 engine for sd35-medium, fp32
for demo), latent MSE, engine.backward, engine.step with DeepSpeedCPUAdam holding the fp32 master weights and AdamW
states in host memory (what Accelerate substitutes for torch's AdamW when the optimizer is offloaded). ZeRO-2 splits
gradients across ranks, so one process holds all of them: its peak bounds the per-GPU peak of more processes from
above. Rows: batch size x gradient checkpointing; 2 warm-up + 3 measured steps each (median step time).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from bench.common import (
    PRESETS,
    build_train_transformer,
    mask_predictor,
    median,
    peak_memory_label,
    resolve_device,
    run_header,
    time_calls,
)
from models.losses import LOSSES
from utils.config import REPO_ROOT
from utils.measure import peak_memory_gib, reset_peak_memory
from utils.tables import markdown_table

DS_CONFIG = REPO_ROOT / "configs" / "deepspeed" / "zero2_offload.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sd35-medium")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--gradient_checkpointing", choices=["off", "on"], nargs="+", default=["off", "on"])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per row, after 2 warm-up steps")
    return parser.parse_args()


def ds_config(batch_size: int, world_size: int, bf16: bool) -> dict:
    """configs/deepspeed/zero2_offload.json with its "auto" values filled in as Accelerate fills them."""
    config = json.loads(DS_CONFIG.read_text())
    config.update(
        train_micro_batch_size_per_gpu=batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=batch_size * world_size,
        gradient_clipping=1.0,
        bf16={"enabled": bf16},
        fp16={"enabled": False},
    )
    return config


def init_single_process_defaults() -> None:
    """`python -m` without a launcher: a world of one (torchrun/deepspeed set these themselves)."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def measure_row(preset, device: torch.device, batch_size: int, checkpointing: bool, steps: int) -> dict:
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    world_size = int(os.environ["WORLD_SIZE"])
    bf16 = preset.autocast_dtype == torch.bfloat16
    transformer = build_train_transformer(preset, device, checkpointing)
    optimizer = DeepSpeedCPUAdam(transformer.parameters(), lr=1e-5, adamw_mode=True)
    engine, *_ = deepspeed.initialize(
        model=transformer, optimizer=optimizer, config=ds_config(batch_size, world_size, bf16)
    )
    predictor = mask_predictor(preset, None, engine, device)  # the VAE is not needed from latents
    shape = (batch_size, preset.transformer_config["in_channels"], preset.latent_side, preset.latent_side)
    generator = torch.Generator().manual_seed(0)
    image_latents = torch.randn(shape, generator=generator).to(device)
    mask_latents = torch.randn(shape, generator=generator).to(device)

    def step() -> float:
        loss = LOSSES["latent_mse"](predictor.predict_latents(image_latents), mask_latents)
        engine.backward(loss)
        engine.step()
        return loss.item()

    time_calls(step, 2, 0, device)  # warm-up: optimizer states and DeepSpeed buffers appear in the first steps
    reset_peak_memory(device)
    times = time_calls(step, 0, steps, device)
    return {"peak_gib": peak_memory_gib(device), "step_seconds": median(times)}


def main() -> None:
    args = parse_args()
    init_single_process_defaults()
    preset = PRESETS[args.preset]
    device = resolve_device(preset)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = torch.device("cuda", torch.cuda.current_device())
    world_size = int(os.environ["WORLD_SIZE"])
    rows = []
    for batch_size in args.batch_sizes:
        for checkpointing in args.gradient_checkpointing:
            try:
                result = measure_row(preset, device, batch_size, checkpointing == "on", args.steps)
                peak, seconds = f"{result['peak_gib']:.2f}", f"{result['step_seconds']:.2f}"
            except torch.cuda.OutOfMemoryError:
                peak, seconds = "out of memory", "n/a"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append([batch_size, checkpointing, world_size, peak, seconds])
    if int(os.environ["RANK"]) == 0:
        headers = ["batch / process", "grad ckpt", "processes", f"{peak_memory_label(device)} / process", "step (s)"]
        tokens = f"{preset.image_tokens} image + {preset.text_tokens} text tokens"
        print(run_header(f"# ZeRO-2 + CPU optimizer offload, preset {preset.name}", device))
        print(f"{preset.resolution} px, {tokens}; {DS_CONFIG.relative_to(REPO_ROOT)}\n")
        print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
