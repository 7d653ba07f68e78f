"""Training-step throughput: samples/s, step time, peak memory and MFU over a grid of settings.

    python -m bench.train_throughput --preset demo --num_threads 1 # tiny demo model at 64 px (~9 min on 2 CPU cores)
    python -m bench.train_throughput --preset sd35-medium          # full size, 1024 px, bf16 autocast: CUDA only
    python -m bench.train_throughput --preset demo --batch_sizes 16 --compile off --cache_latents on off
    python -m bench.train_throughput --preset demo --batch_sizes 16 --compile off --cache_latents on \
        --train_mode full lora                                    # LoRA beside full fine-tuning
    python -m bench.train_throughput --preset demo --batch_sizes 16 --compile off --cache_latents on \
        --gradient_checkpointing off --loss latent_mse pixel latent_mse+pixel   # the pixel loss's cost per step

One row = one setting of training mode x batch size x gradient checkpointing x torch.compile x cached latents x
loss, each with a freshly built model (random init from the preset's config) and AdamW. Training mode lora is
trainer.py's `--train_mode lora`: the base transformer frozen in the preset's frozen dtype (bf16 for sd35-medium),
adapters from models.lora.add_lora (`--lora_rank`, alpha = rank, config.yaml's `lora_target_modules`) in fp32, AdamW
on the adapters only. The step is trainer.py's: image and mask latents (from the frozen VAE, or precomputed when
--cache_latents on), transformer forward under autocast (bf16 for sd35-medium, fp32 for demo, as configs/demo.yaml),
the loss (`--loss`: models.losses.TrainingLoss, pixel_loss_weight 1, the frozen VAE decoding in autograd for the
pixel term), loss.item() (the trainer's finiteness check syncs too), backward, gradient clipping, AdamW step,
zero_grad. Inputs already sit on the device: data loading is measured by bench/dataloader_throughput.py. Warm-up steps
(compilation, optimizer state creation) are excluded; the step time is the median of the timed steps (the minimum is
shown too: on a shared machine it is the least disturbed).

MFU = counted transformer forward+backward FLOPs per sample (FlopCounterMode on the same config, resolution and text
length; model FLOPs: no recompute from gradient checkpointing, no VAE, so no pixel term) x samples/s / peak FLOP/s
(--peak_tflops, default 989 = H100 SXM dense bf16 on CUDA; n/a on CPU unless given).
"""

from __future__ import annotations

import argparse
import gc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from bench.common import (
    Preset,
    add_preset_arguments,
    build_train_transformer,
    build_vae,
    fmt,
    lora_settings,
    mask_predictor,
    median,
    peak_memory_label,
    preset_and_device,
    run_header,
    synchronize,
    time_calls,
    transformer_train_flops,
)
from dataset.transforms import target_channels
from models.lora import add_lora
from models.losses import LOSS_CHOICES, TrainingLoss
from models.segmenter import encode_latents
from utils.measure import peak_memory_gib, reset_peak_memory
from utils.tables import markdown_table

H100_SXM_BF16_DENSE_TFLOPS = 989.0
DEFAULT_BATCH_SIZES = {"demo": [4, 16], "sd35-medium": [1, 2, 4]}


# diffusers' checkpointing wrapper calls an lru_cache'd version check; dynamo traces through it, which is harmless.
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_preset_arguments(parser, default_preset="demo")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default: demo 4 16, sd35 1 2 4")
    parser.add_argument("--gradient_checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument(
        "--cache_latents",
        nargs="+",
        choices=("on", "off"),
        default=["on", "off"],
        help="on: the step starts from precomputed latents; off: the step runs the VAE encoder as trainer.py does",
    )
    parser.add_argument(
        "--train_mode",
        nargs="+",
        choices=("full", "lora"),
        default=["full"],
        help="full: every weight trains (fp32 master); lora: frozen base + fp32 adapters, as trainer.py",
    )
    parser.add_argument("--lora_rank", type=int, default=32, help="train_mode lora: adapter rank (alpha = rank)")
    parser.add_argument(
        "--loss", nargs="+", choices=LOSS_CHOICES, default=["latent_mse"], help="config.yaml's loss (weight 1)"
    )
    parser.add_argument("--warmup_steps", type=int, default=3, help="untimed steps per row (compile happens here)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--peak_tflops", type=float, default=None, help="for MFU; default 989 on CUDA, n/a on CPU")
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Setting:
    batch_size: int
    gradient_checkpointing: bool
    compile: bool
    cache_latents: bool
    lora: bool = False
    loss: str = "latent_mse"

    def cells(self) -> list[str]:
        on_off = {True: "on", False: "off"}
        return [
            "lora" if self.lora else "full",
            str(self.batch_size),
            on_off[self.gradient_checkpointing],
            on_off[self.compile],
            on_off[self.cache_latents],
            self.loss,
        ]


@dataclass
class Result:
    setting: Setting
    step_seconds: float | None = None  # median
    min_step_seconds: float | None = None
    peak_gib: float | None = None
    skipped: str | None = None

    @property
    def samples_per_s(self) -> float | None:
        return None if self.step_seconds is None else self.setting.batch_size / self.step_seconds


def grid(args: argparse.Namespace) -> list[Setting]:
    batch_sizes = args.batch_sizes or DEFAULT_BATCH_SIZES[args.preset]
    return [
        Setting(batch, checkpointing == "on", compiled == "on", cached == "on", mode == "lora", loss)
        for mode in args.train_mode
        for compiled in args.compile
        for batch in batch_sizes
        for checkpointing in args.gradient_checkpointing
        for cached in args.cache_latents
        for loss in args.loss
    ]


def make_train_step(
    preset: Preset, setting: Setting, device: torch.device, max_grad_norm: float, lora_rank: int = 32
) -> Callable[[], float]:
    """Build models, optimizer and a batch on `device`; return a function that runs one training step."""
    transformer = build_train_transformer(preset, device, setting.gradient_checkpointing)
    if setting.lora:  # as trainer.py: the frozen base in the compute precision, fp32 adapters
        lora = lora_settings(lora_rank)
        add_lora(transformer if preset.frozen_dtype == torch.float32 else transformer.to(preset.frozen_dtype), lora)
    vae = build_vae(preset.vae_config, device, preset.frozen_dtype)
    predictor = mask_predictor(preset, vae, torch.compile(transformer) if setting.compile else transformer, device)
    trainable = [p for p in transformer.parameters() if p.requires_grad]  # trainer.py's build_optimizer
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    shape = (setting.batch_size, 3, preset.resolution, preset.resolution)
    pixels = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    masks = (torch.rand(shape, generator=generator).round() * 2 - 1).to(device)
    gt_mask = target_channels(masks, "binary")  # the latent cache stores it beside the latents
    cached = (encode_latents(vae, pixels), encode_latents(vae, masks)) if setting.cache_latents else None
    autocast = {
        "device_type": device.type,
        "dtype": preset.autocast_dtype,
        "enabled": preset.autocast_dtype is not None,
    }
    loss_fn = TrainingLoss(setting.loss, 1.0, vae)

    def step() -> float:
        if cached is not None:
            image_latents, mask_latents = cached
        else:
            image_latents, mask_latents = encode_latents(vae, pixels), encode_latents(vae, masks)
        with torch.autocast(**autocast):
            predicted = predictor.predict_latents(image_latents.float())
        loss = loss_fn(predicted, mask_latents, gt_mask)
        value = loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    return step


def short_error(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"


def measure(preset: Preset, setting: Setting, device: torch.device, args: argparse.Namespace) -> Result:
    """Time one row; an out-of-memory row or a failing torch.compile is reported as skipped, with the reason."""
    result = Result(setting)
    try:
        step = make_train_step(preset, setting, device, args.max_grad_norm, args.lora_rank)
        reset_peak_memory(device)
        times = time_calls(step, args.warmup_steps, args.steps, device)
    except torch.cuda.OutOfMemoryError:
        result.skipped = "out of memory"
        return result
    except Exception as error:  # compile failures surface at the first call, inside the warm-up
        if not setting.compile:
            raise
        result.skipped = f"torch.compile failed: {short_error(error)}"
        return result
    finally:
        free_memory(device)
    result.step_seconds, result.min_step_seconds = median(times), min(times)
    result.peak_gib = peak_memory_gib(device)
    return result


def free_memory(device: torch.device) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


def peak_flops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    return H100_SXM_BF16_DENSE_TFLOPS * 1e12 if device.type == "cuda" else None


def results_table(results: Sequence[Result], flops_per_sample: int, peak: float | None, device: torch.device) -> str:
    headers = (
        "mode",
        "batch",
        "grad ckpt",
        "compile",
        "cached latents",
        "loss",
        "step (ms)",
        "min step (ms)",
        "samples/s",
        "model TFLOP/s",
        peak_memory_label(device),
        "MFU",
    )
    rows = []
    for result in results:
        if result.skipped:
            rows.append([*result.setting.cells(), f"skipped: {result.skipped}", "-", "-", "-", "-", "-"])
            continue
        achieved = flops_per_sample * result.samples_per_s
        mfu = None if peak is None else 100 * achieved / peak
        rows.append(
            [
                *result.setting.cells(),
                fmt(1000 * result.step_seconds, ".1f"),
                fmt(1000 * result.min_step_seconds, ".1f"),
                fmt(result.samples_per_s, ".1f"),
                fmt(achieved / 1e12, ".3f"),
                fmt(result.peak_gib),
                "n/a" if mfu is None else f"{mfu:.1f}%",
            ]
        )
    return markdown_table(headers, rows)


def caching_speedups(results: Sequence[Result]) -> str | None:
    """Cached vs uncached latents, for every setting measured both ways in this run."""
    by_setting = {r.setting: r for r in results if r.samples_per_s is not None}
    rows = []
    for setting, cached in by_setting.items():
        uncached = by_setting.get(replace(setting, cache_latents=False))
        if setting.cache_latents and uncached is not None:
            speedup = cached.samples_per_s / uncached.samples_per_s
            rows.append([*setting.cells()[:4], f"{speedup:.2f}x"])
    if not rows:
        return None
    return markdown_table(("mode", "batch", "grad ckpt", "compile", "cached / uncached samples/s"), rows)


def loss_costs(results: Sequence[Result]) -> str | None:
    """Step time of each loss against latent_mse, for every setting measured both ways in this run."""
    by_setting = {r.setting: r for r in results if r.step_seconds is not None}
    rows = []
    for setting, result in by_setting.items():
        baseline = by_setting.get(replace(setting, loss="latent_mse"))
        if setting.loss != "latent_mse" and baseline is not None:
            rows.append([*setting.cells(), f"{result.step_seconds / baseline.step_seconds:.2f}x"])
    if not rows:
        return None
    headers = ("mode", "batch", "grad ckpt", "compile", "cached latents", "loss", "step time / latent_mse's")
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    preset, device = preset_and_device(args)
    settings = grid(args)
    print(run_header(f"# Training throughput, preset {preset.name}", device))
    flops = transformer_train_flops(preset.transformer_config, preset.resolution, preset.text_tokens)
    print(
        f"{preset.resolution} px, {preset.image_tokens} image + {preset.text_tokens} text tokens; counted transformer "
        f"forward+backward {flops.total / 1e9:.3f} GFLOP/sample; autocast {preset.autocast_dtype or 'off (fp32)'}; "
        f"{args.warmup_steps} warm-up + {args.steps} timed steps per row (median step time)\n",
        flush=True,
    )
    results = []
    for index, setting in enumerate(settings, 1):
        mode, batch, checkpointing, compiled, cached, loss = setting.cells()
        print(
            f"[{index}/{len(settings)}] {mode}, batch {batch}, grad ckpt {checkpointing}, compile {compiled}, "
            f"cached latents {cached}, loss {loss}",
            flush=True,
        )
        results.append(measure(preset, setting, device, args))
        if results[-1].skipped:
            print(f"  skipped: {results[-1].skipped}", flush=True)
    peak = peak_flops(args, device)
    print()
    print(results_table(results, flops.total, peak, device))
    speedups = caching_speedups(results)
    if speedups:
        print("\nSpeed-up from cached latents (same run)\n")
        print(speedups)
    costs = loss_costs(results)
    if costs:
        print("\nStep time against the latent_mse step (same run)\n")
        print(costs)
    if peak is None:
        print("\nMFU: n/a on CPU (pass --peak_tflops to compare against a peak).")
    else:
        print(f"\nMFU against {peak / 1e12:.0f} TFLOP/s peak.")


if __name__ == "__main__":
    main()
