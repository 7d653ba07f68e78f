"""Build the offline demo assets: a synthetic Trans10k and a tiny model folder in the SD3.5 hub layout.

    python -m demo.assets [--output_dir demo_assets] [--seed 0] [--force]

writes
    <output_dir>/trans10k/   synthetic data in the Trans10k layout (dataset/synthetic.py)
    <output_dir>/sd35-tiny/  model_index.json, scheduler/, text_encoder{,_2,_3}/, tokenizer{,_2,_3}/, transformer/,
                             vae/ as StableDiffusion3Pipeline.save_pretrained writes them, plus demo_build_report.json

The hub is unreachable in the demo and test environments, so every component is built tiny and from a seed. The
transformer stays randomly initialised (the demo trains it). The VAE cannot: the method decodes mask latents, so the
VAE is fitted briefly on the synthetic train images and masks and then calibrated (shift_factor, scaling_factor) as
Stable Diffusion does, and its mask round-trip IoU on the test split is measured and reported.

Each folder is built in a hidden temporary sibling and renamed into place after its `.complete` marker is written,
so a killed build never looks complete. Complete folders built with the same parameters are skipped unless --force.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.utils import logging as transformers_logging

from dataset.synthetic import resolve_counts, write_synthetic_trans10k
from dataset.trans10k import load_image, load_mask_grey, scan_split
from dataset.transforms import IMAGE_RESAMPLE, MASK_RESAMPLE, binary_to_tensor, image_to_tensor
from utils.atomic import replace_dir
from utils.measure import count_parameters

DATA_DIRNAME = "trans10k"
MODEL_DIRNAME = "sd35-tiny"
REPORT_FILENAME = "demo_build_report.json"
COMPLETE_MARKER = ".complete"
DEMO_RESOLUTION = 64  # square side the demo trains at: 8x8 latents, 4x4 transformer tokens

# SD3.5-medium's architecture, from stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X: dual
# attention in the first 13 blocks) and vae/config.json. The benchmarks build it at full size with random weights;
# the tiny configs below keep its layout and shrink its widths.
SD35_MEDIUM_TRANSFORMER_CONFIG: dict = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD35_MEDIUM_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5305,
}

# Transformer size; the lead tunes this. joint_attention_dim and pooled_projection_dim are fixed by the text encoders
# below (T5 d_model and the sum of the two CLIP projection dims). Patch size, channels and qk_norm stay SD3.5-medium's
# and dual attention sits in the first layers as there (MMDiT-X), so code paths that depend on them are exercised by
# the demo too.
TINY_TRANSFORMER_CONFIG: dict = {
    **SD35_MEDIUM_TRANSFORMER_CONFIG,
    "sample_size": DEMO_RESOLUTION // 8,  # latent side at the demo resolution (sets the positional-embedding base)
    "num_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 32,
    "caption_projection_dim": 128,  # = num_attention_heads * attention_head_dim, as in SD3.5
    "pooled_projection_dim": 16,
    "pos_embed_max_size": 32,  # latent grids up to 64x64, i.e. images up to 512 px
    "dual_attention_layers": (0, 1),
}

# SD3.5's VAE shape (16 latent channels, 4 blocks = spatial factor 8, no quant convs) with very few channels. Its
# shift_factor and scaling_factor are left to AutoencoderKL's defaults: the builder calibrates them after the fit.
TINY_VAE_CONFIG: dict = {
    **{key: value for key, value in SD35_MEDIUM_VAE_CONFIG.items() if key not in ("shift_factor", "scaling_factor")},
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    # One group: GroupNorm removes each group's per-image mean, and with few channels per group that erases colour
    # casts. Measured in the demo: 1 group instead of 2 lowered the test latent loss 0.36 -> 0.25 (IoU 0.72 -> 0.75).
    "norm_num_groups": 1,
    "sample_size": DEMO_RESOLUTION,
}

# VAE fit, sized for a ~100 s build on a 2-core CPU (~0.06 s per step). Small batches of small crops reach a given
# quality with the least compute; the VAE is convolutional, so what it learns on 32 px crops carries over to whole
# 64 px images (16 px crops did not). Measured on the demo (transformer test IoU after 2400 steps): 800 steps at
# lr 2e-3 with 75 % masks 0.72; 1600 steps at lr 1e-3 with half masks 0.75. Masks are easy (round-trip IoU 0.97
# within 800 steps); the image latents are what the transformer has to read the glass from.
VAE_FIT_STEPS = 1600
VAE_FIT_BATCH_SIZE = 16
VAE_FIT_CROP = 32
VAE_FIT_LR = 1e-3
VAE_MASK_FRACTION = 0.5  # share of masks in each batch
VAE_LATENT_PENALTY = 1e-4  # weight of mean(mode^2): keeps latents bounded, negligible for reconstruction
# One thread: these tiny convolutions gain only ~1.3x from a second core, but when anything else runs on a 2-core
# machine OpenMP's barriers made a 2-thread step over 20x slower (measured). One thread also makes the fit
# bit-reproducible on any core count.
BUILD_NUM_THREADS = 1

# Tiny text encoders: a character vocabulary is enough for encode_prompt("") to run the real code path.
_CHARS = [chr(i) for i in range(97, 123)] + [str(i) for i in range(10)]
# SD3.5's CLIP tokenizers pad to 77 tokens and the pipeline pads T5 to max_sequence_length (256). At 64 px the image
# stream has only 16 tokens, so 333 text tokens made a demo step ~7x slower (measured); the tiny CLIPs pad to 8
# tokens instead and configs/demo.yaml sets max_sequence_length 8. encode_prompt reads the length from the
# tokenizer, so the real code path is unchanged.
CLIP_MAX_LENGTH = 8
CLIP_HIDDEN_SIZE = 16
CLIP_PROJECTION_DIM = 8  # two CLIPs: pooled_projection_dim = 2 * 8
T5_D_MODEL = 32  # = joint_attention_dim (CLIP hidden states are zero-padded to it)


# ---------------------------------------------------------------- components


def build_clip_pair(seed: int) -> tuple[CLIPTextModelWithProjection, CLIPTokenizer]:
    """A tiny CLIP text encoder and its tokenizer, with a character vocabulary."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _CHARS:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=CLIP_HIDDEN_SIZE,
        intermediate_size=2 * CLIP_HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=CLIP_PROJECTION_DIM,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config), tokenizer


def build_t5(seed: int) -> tuple[T5EncoderModel, T5Tokenizer]:
    """A tiny T5 encoder and its tokenizer, with a character unigram vocabulary."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + c, -1.0) for c in _CHARS] + [(c, -2.0) for c in _CHARS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=256)
    config = T5Config(vocab_size=len(vocab), d_model=T5_D_MODEL, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(seed)
    return T5EncoderModel(config), tokenizer


def build_tiny_transformer(seed: int, config: dict | None = None) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**(config or TINY_TRANSFORMER_CONFIG))


def build_tiny_vae(seed: int, config: dict | None = None) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**(config or TINY_VAE_CONFIG))


# ---------------------------------------------------------------- data for the VAE


def load_split_tensors(data_root: Path, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image/mask pair of a split (test: easy, then hard), found and read as dataset.trans10k does, resized to
    a square; a subset folder without pairs contributes none.

    Returns (images, masks), both (N, 3, R, R) float in [-1, 1]; masks are binary: -1 background, +1 transparent
    (stuff and things alike), repeated over 3 channels, which is how the method feeds masks to the VAE.
    """
    side = (resolution, resolution)
    images, masks = [], []
    for sample in scan_split(data_root, split).samples:
        images.append(image_to_tensor(load_image(sample.image_path).resize(side, IMAGE_RESAMPLE)))
        masks.append(binary_to_tensor(np.array(load_mask_grey(sample.mask_path).resize(side, MASK_RESAMPLE)) > 0))
    if not images:
        return torch.zeros(0, 3, resolution, resolution), torch.zeros(0, 3, resolution, resolution)
    return torch.stack(images), torch.stack(masks)


# ---------------------------------------------------------------- VAE fit, metrics, calibration


def fit_vae(
    vae: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    steps: int = VAE_FIT_STEPS,
    batch_size: int = VAE_FIT_BATCH_SIZE,
    lr: float = VAE_FIT_LR,
    latent_penalty: float = VAE_LATENT_PENALTY,
    mask_fraction: float = VAE_MASK_FRACTION,
    crop_size: int | None = VAE_FIT_CROP,
    seed: int = 0,
) -> list[float]:
    """Fit the VAE as a deterministic autoencoder on images and masks; returns the loss of every step.

    The method encodes with the posterior mode and never samples, so the fit uses the mode too (no KL needed); a
    small penalty on mean(mode^2) stops the latents from drifting to large values that the calibration would then
    have to undo.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    # Cosine decay: a high rate early for speed, a low one at the end for a clean final reconstruction.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    num_masks = round(batch_size * mask_fraction)
    losses = []
    vae.train()
    for _ in range(steps):
        batch = torch.cat(
            [
                images[torch.randint(len(images), (batch_size - num_masks,), generator=generator)],
                masks[torch.randint(len(masks), (num_masks,), generator=generator)],
            ]
        )
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        if crop_size is not None and crop_size < batch.shape[-1]:
            batch = random_crop(batch, crop_size, generator)
        latents = vae.encode(batch).latent_dist.mode()
        reconstruction = vae.decode(latents).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + latent_penalty * latents.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    vae.eval()
    return losses


def random_crop(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window per sample, at offsets on the 8-pixel latent grid like whole images."""
    cells = (batch.shape[-1] - size) // 8 + 1
    offsets = torch.randint(cells, (len(batch), 2), generator=generator) * 8
    windows = [sample[:, y : y + size, x : x + size] for sample, (y, x) in zip(batch, offsets.tolist(), strict=True)]
    return torch.stack(windows)


@torch.no_grad()
def encode_modes(vae: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in pixels.split(batch_size)])


@torch.no_grad()
def roundtrip(vae: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """pixels -> posterior mode -> decode, in chunks."""
    outputs = [vae.decode(vae.encode(chunk).latent_dist.mode()).sample for chunk in pixels.split(batch_size)]
    return torch.cat(outputs)


def mask_roundtrip_iou(vae: torch.nn.Module, masks: torch.Tensor) -> dict[str, float]:
    """IoU of masks after a VAE round trip, decoded the way the method decodes predictions.

    decoded -> mean over channels -> [-1, 1] mapped to [0, 1] -> >= 0.5, against ground truth > 0.
    "iou" accumulates intersection and union over the whole set (Trans10k style); "iou_per_image_mean" averages
    per-image IoUs (an image with an empty ground truth and an empty prediction counts as 1).
    """
    predicted = (roundtrip(vae, masks).mean(dim=1) + 1) / 2 >= 0.5
    target = masks[:, 0] > 0
    intersection = (predicted & target).flatten(1).sum(1).double()
    union = (predicted | target).flatten(1).sum(1).double()
    per_image = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return {
        "iou": float(intersection.sum() / union.sum().clamp(min=1)),
        "iou_per_image_mean": float(per_image.mean()),
    }


def image_psnr(vae: torch.nn.Module, images: torch.Tensor) -> float:
    """PSNR in dB of the round trip, on images in [0, 1], from the MSE over the whole set."""
    reconstruction = roundtrip(vae, images).clamp(-1, 1)
    mse = float(((reconstruction - images) / 2).pow(2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def latent_calibration(vae: torch.nn.Module, pixels: torch.Tensor) -> tuple[float, float]:
    """(shift_factor, scaling_factor) such that (mode - shift) * scale has zero mean and unit variance."""
    latents = encode_modes(vae, pixels).double()
    return float(latents.mean()), float(1 / latents.std())


# ---------------------------------------------------------------- the model folder


@contextlib.contextmanager
def torch_num_threads(num_threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def transformers_progress_bars_disabled() -> Iterator[None]:
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def build_tiny_model_folder(
    model_dir: Path,
    data_root: Path,
    seed: int = 0,
    vae_fit_steps: int = VAE_FIT_STEPS,
    vae_fit_batch_size: int = VAE_FIT_BATCH_SIZE,
    resolution: int = DEMO_RESOLUTION,
) -> dict:
    """Build every SD3.5 component tiny, fit and calibrate the VAE, save the pipeline; returns the build report."""
    with torch_num_threads(BUILD_NUM_THREADS):
        text_encoder, tokenizer = build_clip_pair(seed)
        text_encoder_2, tokenizer_2 = build_clip_pair(seed + 1)
        text_encoder_3, tokenizer_3 = build_t5(seed + 2)
        transformer = build_tiny_transformer(seed + 3)
        vae = build_tiny_vae(seed + 4)
        vae_report = fit_and_calibrate_vae(vae, data_root, resolution, vae_fit_steps, vae_fit_batch_size, seed)
        pipeline = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),  # SD3.5's config
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
        with transformers_progress_bars_disabled():  # one "Writing model shards" bar per text encoder is noise
            pipeline.save_pretrained(model_dir)

    report = {
        "seed": seed,
        "resolution": resolution,
        "parameters": {
            name: count_parameters(getattr(pipeline, name))
            for name in ("vae", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
        },
        "transformer_config": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_TRANSFORMER_CONFIG.items()},
        **vae_report,
    }
    (model_dir / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def fit_and_calibrate_vae(
    vae: AutoencoderKL, data_root: Path, resolution: int, steps: int, batch_size: int, seed: int
) -> dict:
    """Fit the VAE on the train split, set its shift/scaling factors, and measure it on the test split."""
    train_images, train_masks = load_split_tensors(data_root, "train", resolution)
    test_images, test_masks = load_split_tensors(data_root, "test", resolution)
    if len(train_images) == 0 or len(test_images) == 0:
        raise ValueError(f"{data_root} has no train or no test images to fit and check the VAE on")

    iou_before = mask_roundtrip_iou(vae, test_masks)
    started = time.perf_counter()
    losses = fit_vae(vae, train_images, train_masks, steps=steps, batch_size=batch_size, seed=seed)
    fit_seconds = time.perf_counter() - started
    shift_factor, scaling_factor = latent_calibration(vae, torch.cat([train_images, train_masks]))
    vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)
    iou_after = mask_roundtrip_iou(vae, test_masks)
    return {
        "vae_fit": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": VAE_FIT_LR,
            "crop": VAE_FIT_CROP,
            "mask_fraction": VAE_MASK_FRACTION,
            "train_images": len(train_images),
            "seconds": round(fit_seconds, 2),
            "torch_num_threads": torch.get_num_threads(),
            "first_loss": round(losses[0], 5) if losses else None,
            "final_loss": round(losses[-1], 5) if losses else None,
        },
        "test_images": len(test_images),
        "mask_roundtrip_iou_test": round(iou_after["iou"], 4),
        "mask_roundtrip_iou_test_per_image_mean": round(iou_after["iou_per_image_mean"], 4),
        "mask_roundtrip_iou_test_before_fit": round(iou_before["iou"], 4),
        "image_psnr_test_db": round(image_psnr(vae, test_images), 2),
        "shift_factor": shift_factor,
        "scaling_factor": scaling_factor,
    }


# ---------------------------------------------------------------- complete-or-rebuild folders


def is_complete(folder: Path, build_params: dict) -> bool:
    """True when folder holds a finished build made with the same parameters."""
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == build_params
    except json.JSONDecodeError:
        return False


@contextlib.contextmanager
def building(final_dir: Path, build_params: dict) -> Iterator[Path]:
    """Yield a temporary sibling of final_dir to build into; on success mark it complete and move it into place.

    The rename is the last step, so final_dir is either absent, an old build, or a complete new one; a build that
    fails or is interrupted removes its temporary folder. A SIGKILL leaves a hidden `.<name>.tmp-*` behind, which is
    never mistaken for a build; it is not swept up automatically because it might be a concurrent build by someone
    else sharing the checkout.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_dir, 0o777 & ~umask)  # mkdtemp makes it private (0700); the final folder gets normal permissions
    try:
        yield temp_dir
        (temp_dir / COMPLETE_MARKER).write_text(json.dumps(build_params, sort_keys=True))
        _move_into_place(temp_dir, final_dir, build_params)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)  # already gone after a successful move


def _move_into_place(temp_dir: Path, final_dir: Path, build_params: dict) -> None:
    try:
        replace_dir(temp_dir, final_dir)  # an old build is renamed aside before it is deleted, never half deleted
    except OSError:
        # Someone else in the same checkout moved a build in between: fine if it is complete and equivalent.
        if not is_complete(final_dir, build_params):
            raise


def _counts_as_json(counts: dict | None) -> dict[str, int]:
    return {f"{split}/{subset}" if subset else split: n for (split, subset), n in resolve_counts(counts).items()}


def build_demo_assets(
    output_dir: str | Path = "demo_assets",
    seed: int = 0,
    force: bool = False,
    counts: dict | None = None,
    vae_fit_steps: int = VAE_FIT_STEPS,
    vae_fit_batch_size: int = VAE_FIT_BATCH_SIZE,
) -> dict[str, Path]:
    """Build whatever is missing, incomplete or built with other parameters; returns the two folders.

    The model is rebuilt whenever the data is, because its VAE is fitted (and checked) on that data.
    """
    output_dir = Path(output_dir)
    data_dir, model_dir = output_dir / DATA_DIRNAME, output_dir / MODEL_DIRNAME
    data_params = {"seed": seed, "counts": _counts_as_json(counts)}
    model_params = {**data_params, "vae_fit_steps": vae_fit_steps, "vae_fit_batch_size": vae_fit_batch_size}

    data_rebuilt = force or not is_complete(data_dir, data_params)
    if data_rebuilt:
        started = time.perf_counter()
        with building(data_dir, data_params) as temp_dir:
            write_synthetic_trans10k(temp_dir, seed=seed, counts=counts)
        print(f"synthetic Trans10k -> {data_dir} ({time.perf_counter() - started:.1f} s)", flush=True)
    else:
        print(f"synthetic Trans10k: {data_dir} is complete, skipped", flush=True)

    if data_rebuilt or not is_complete(model_dir, model_params):
        started = time.perf_counter()
        with building(model_dir, model_params) as temp_dir:
            report = build_tiny_model_folder(
                temp_dir, data_dir, seed=seed, vae_fit_steps=vae_fit_steps, vae_fit_batch_size=vae_fit_batch_size
            )
        print(f"tiny SD3.5 model -> {model_dir} ({time.perf_counter() - started:.1f} s)", flush=True)
        print_report(report)
    else:
        print(f"tiny SD3.5 model: {model_dir} is complete, skipped", flush=True)
    return {"data": data_dir, "model": model_dir}


def print_report(report: dict) -> None:
    params, fit = report["parameters"], report["vae_fit"]
    encoders = " / ".join(f"{params[name]:,}" for name in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    lines = [
        f"parameters: vae {params['vae']:,}, transformer {params['transformer']:,}, text encoders {encoders}",
        f"VAE fit: {fit['steps']} steps x batch {fit['batch_size']} in {fit['seconds']:.1f} s "
        f"(loss {fit['first_loss']} -> {fit['final_loss']})",
        f"test split, {report['test_images']} images at {report['resolution']} px: "
        f"mask round-trip IoU {report['mask_roundtrip_iou_test']:.4f} "
        f"(per-image mean {report['mask_roundtrip_iou_test_per_image_mean']:.4f}, "
        f"unfitted VAE {report['mask_roundtrip_iou_test_before_fit']:.4f}), "
        f"image PSNR {report['image_psnr_test_db']:.2f} dB",
        f"latent calibration: shift_factor {report['shift_factor']:.4f}, "
        f"scaling_factor {report['scaling_factor']:.4f}",
    ]
    print("\n".join("  " + line for line in lines), flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="demo_assets", help="where trans10k/ and sd35-tiny/ go")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and every model")
    parser.add_argument("--force", action="store_true", help="rebuild even what is complete")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    build_demo_assets(args.output_dir, seed=args.seed, force=args.force)
    print(f"demo assets ready in {args.output_dir} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
