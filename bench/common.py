"""Shared helpers for the bench scripts: presets and their command-line flags, model builders, FLOP counting, timing
and the machine line of each report (parameter counts and peak memory come from utils.measure, Markdown tables from
utils.tables).

Models are always built from configs with random weights (the hub is never contacted): the tiny demo model of
demo/assets.py, or the full SD3.5-medium architecture from its public config (also in demo/assets.py). Throughput does
not depend on the weight values, only on the architecture, the resolution and the number of text tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from torch.utils.flop_counter import FlopCounterMode

from demo.assets import (
    CLIP_MAX_LENGTH,
    DEMO_RESOLUTION,
    SD35_MEDIUM_TRANSFORMER_CONFIG,
    SD35_MEDIUM_VAE_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
)
from models.segmenter import MaskPredictor
from utils.config import REPO_ROOT, parse_config, read_specs

# The empty prompt through SD3's encode_prompt: 77 CLIP tokens + 256 T5 tokens (max_sequence_length 256).
TEXT_TOKENS = 77 + 256
# The demo: the tiny CLIP tokenizers' length + configs/demo.yaml's max_sequence_length (8 + 8).
DEMO_TEXT_TOKENS = (
    CLIP_MAX_LENGTH + parse_config(["--config", str(REPO_ROOT / "configs" / "demo.yaml")])[0].max_sequence_length
)
FIXED_TIMESTEP = 999.0  # the value does not change the cost


@dataclass(frozen=True)
class Preset:
    """What a bench row runs: architecture, resolution, precision and where it may run."""

    name: str
    transformer_config: dict
    vae_config: dict
    resolution: int
    needs_cuda: bool
    autocast_dtype: torch.dtype | None  # training: fp32 master weights, compute under autocast in this dtype
    frozen_dtype: torch.dtype  # the VAE in training, VAE and transformer in inference (as trainer/predict.py do)
    text_tokens: int = TEXT_TOKENS

    @property
    def latent_side(self) -> int:
        return self.resolution // 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def image_tokens(self) -> int:
        return (self.latent_side // self.transformer_config["patch_size"]) ** 2


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        transformer_config=TINY_TRANSFORMER_CONFIG,
        # The demo VAE's shift and scale are calibrated when demo_assets is built; they do not change the cost.
        vae_config={**TINY_VAE_CONFIG, "shift_factor": 0.0, "scaling_factor": 1.0},
        resolution=DEMO_RESOLUTION,
        needs_cuda=False,
        autocast_dtype=None,  # configs/demo.yaml: mixed_precision "no"
        frozen_dtype=torch.float32,
        text_tokens=DEMO_TEXT_TOKENS,
    ),
    "sd35-medium": Preset(
        name="sd35-medium",
        transformer_config=SD35_MEDIUM_TRANSFORMER_CONFIG,
        vae_config=SD35_MEDIUM_VAE_CONFIG,
        resolution=1024,
        needs_cuda=True,
        autocast_dtype=torch.bfloat16,
        frozen_dtype=torch.bfloat16,
    ),
}


def add_preset_arguments(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """--preset, --device and --num_threads; `preset_and_device` reads them back."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads; 1 on a shared CPU")


def preset_and_device(args: argparse.Namespace) -> tuple[Preset, torch.device]:
    """The preset and device that `add_preset_arguments`' flags ask for; sets torch's CPU threads to --num_threads."""
    preset = PRESETS[args.preset]
    device = resolve_device(preset, args.device)
    apply_num_threads(args.num_threads)
    return preset, device


def apply_num_threads(num_threads: int | None) -> None:
    """Set torch's intra-op threads. On a shared CPU use fewer threads than cores: OpenMP threads spin-wait at every
    barrier, and when another process holds a core the step can run tens of times slower (measured: 40x with 2
    threads on 2 busy cores; OMP_WAIT_POLICY=PASSIVE in the environment also avoids it)."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)


def resolve_device(preset: Preset, requested: str = "auto") -> torch.device:
    """cuda when available (or asked for), else cpu; a preset that needs a GPU exits with a message without one."""
    cuda = torch.cuda.is_available()
    if preset.needs_cuda and not cuda:
        raise SystemExit(
            f"--preset {preset.name} needs a CUDA GPU (full-size SD3.5 in bf16) and this machine has none; "
            "run --preset demo here, or bench/flops_and_memory.py for CPU-side counts and memory estimates"
        )
    if requested == "auto":
        return torch.device("cuda" if cuda else "cpu")
    if requested == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA GPU on this machine")
    return torch.device(requested)


# ---------------------------------------------------------------------------------------------------------------------
# Models


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point tensors in `dtype` (models built in their final dtype: no copy, no cast warning)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(
    config: dict, device: torch.device | str, dtype: torch.dtype = torch.float32, seed: int = 0
) -> SD3Transformer2DModel:
    """Randomly initialised SD3 transformer, created directly on `device` (meta: shapes only, no memory)."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        return SD3Transformer2DModel(**config)


def build_train_transformer(
    preset: Preset, device: torch.device, gradient_checkpointing: bool
) -> SD3Transformer2DModel:
    """The preset's transformer as training holds it: fp32 master weights, train mode, checkpointing if asked."""
    transformer = build_transformer(preset.transformer_config, device, torch.float32).train()
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def build_vae(
    config: dict, device: torch.device | str, dtype: torch.dtype = torch.float32, seed: int = 0
) -> AutoencoderKL:
    """Frozen, randomly initialised AutoencoderKL in eval mode."""
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        vae = AutoencoderKL(**config)
    return vae.requires_grad_(False).eval()


def conditioning(
    config: dict, text_tokens: int, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [1, L, D], pooled [1, P]) of the right shapes; values do not matter for speed or FLOPs."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, text_tokens, config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=generator)
    return prompt.to(device, dtype), pooled.to(device, dtype)


def lora_settings(rank: int) -> argparse.Namespace:
    """The LoRA keys models.lora.add_lora reads: config.yaml's defaults, the given rank, alpha = rank."""
    specs = read_specs()
    return argparse.Namespace(
        lora_rank=rank,
        lora_alpha=rank,
        lora_dropout=specs["lora_dropout"].default,
        lora_target_modules=specs["lora_target_modules"].default,
    )


def mask_predictor(
    preset: Preset,
    vae: AutoencoderKL | None,
    transformer: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> MaskPredictor:
    """MaskPredictor over `transformer` (a model, a compiled one or a DeepSpeed engine) with conditioning of the
    preset's shapes in `dtype` and the fixed timestep."""
    prompt, pooled = conditioning(preset.transformer_config, preset.text_tokens, device, dtype)
    return MaskPredictor(vae, transformer, prompt, pooled, FIXED_TIMESTEP)


def token_groups(model: torch.nn.Module) -> dict[str, int]:
    """Parameters by how many tokens pass through them in one forward pass of the MMDiT.

    image: the image stream (patch embedding, image q/k/v/out, image MLP, dual attention, output projection);
    text: the context stream (context embedder, added q/k/v/out, context MLP); per-sample: the adaLN modulation and
    timestep/pooled-text embedders, which act on one conditioning vector per sample, not on tokens.
    """
    groups = {"image": 0, "text": 0, "per-sample": 0}
    for name, parameter in model.named_parameters():
        if (
            name.startswith(("time_text_embed.", "norm_out."))
            or ".norm1.linear" in name
            or "norm1_context.linear" in name
        ):
            groups["per-sample"] += parameter.numel()
        elif "context" in name or ".add_" in name or "to_add_out" in name or "norm_added_" in name:
            groups["text"] += parameter.numel()
        else:
            groups["image"] += parameter.numel()
    return groups


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class FlopCount:
    total: int
    by_op: dict[str, int]

    def op_flops(self, *names: str) -> int:
        return sum(flops for op, flops in self.by_op.items() if any(name in op for name in names))


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """FLOPs of everything `fn` runs (a multiply-add counts as 2), by aten op, via torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(op): int(flops) for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(int(counter.get_total_flops()), by_op)


@dataclass(frozen=True)
class TrainFlops:
    forward: FlopCount
    backward: FlopCount

    @property
    def total(self) -> int:
        return self.forward.total + self.backward.total


def transformer_train_flops(config: dict, resolution: int, text_tokens: int, batch_size: int = 1) -> TrainFlops:
    """Counted FLOPs of one transformer forward and backward on the meta device (no memory, no real compute).

    The latents need no gradient (they come from the frozen VAE), as in training. Attention runs as SDPA; on meta it
    decomposes into bmm ops, which are counted like the fused kernels' own formulas (QK^T and PV).
    """
    model = build_transformer(config, "meta").train()
    side = resolution // 8
    latents = torch.empty(batch_size, config["in_channels"], side, side, device="meta")
    prompt = torch.empty(batch_size, text_tokens, config["joint_attention_dim"], device="meta")
    pooled = torch.empty(batch_size, config["pooled_projection_dim"], device="meta")
    timestep = torch.full((batch_size,), FIXED_TIMESTEP, device="meta")
    outputs = {}

    def forward() -> None:
        outputs["predicted"] = model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    forward_flops = count_flops(forward)
    backward_flops = count_flops(lambda: outputs["predicted"].float().pow(2).mean().backward())
    return TrainFlops(forward_flops, backward_flops)


def attention_forward_flops(config: dict, image_tokens: int, text_tokens: int, batch_size: int = 1) -> int:
    """Analytic FLOPs of the attention matmuls (QK^T and PV) in one forward pass.

    Every block attends over the joint image+text sequence; the dual-attention blocks add an image-only attention.
    """
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    joint = 4 * (image_tokens + text_tokens) ** 2 * inner * config["num_layers"]
    dual = 4 * image_tokens**2 * inner * len(config.get("dual_attention_layers") or ())
    return batch_size * (joint + dual)


def vae_flops(config: dict, resolution: int, batch_size: int = 1) -> tuple[FlopCount, FlopCount]:
    """(encode, decode) FLOPs of the VAE for `batch_size` square images, on the meta device."""
    vae = build_vae(config, "meta")
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    pixels = torch.empty(batch_size, config["in_channels"], resolution, resolution, device="meta")
    latents = torch.empty(
        batch_size, config["latent_channels"], resolution // factor, resolution // factor, device="meta"
    )
    with torch.no_grad():
        encode = count_flops(lambda: vae.encode(pixels).latent_dist.mode())
        decode = count_flops(lambda: vae.decode(latents).sample)
    return encode, decode


# ---------------------------------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls; the device is synchronised around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_memory_label(device: torch.device) -> str:
    return "peak allocated (GiB)" if device.type == "cuda" else "peak RSS, whole process (GiB)"


# ---------------------------------------------------------------------------------------------------------------------
# Reporting


def machine_description(device: torch.device) -> str:
    """One line naming the machine the numbers come from."""
    torch_part = f"torch {torch.__version__}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {torch_part}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu} CPU, {cores} cores available, {torch.get_num_threads()} torch threads, {torch_part}"


def run_header(title: str, device: torch.device) -> str:
    today = datetime.date.today().isoformat()
    return f"{title}\n\n{today}; {machine_description(device)}\n"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def tera(flops: float) -> str:
    return f"{flops / 1e12:.2f}"
