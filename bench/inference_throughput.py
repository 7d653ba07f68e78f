"""Inference throughput, end to end and per stage: load JPEG -> VAE encode -> transformer step -> VAE decode -> PNG.

    python -m demo.assets                                    # once: the demo data (1-2 min on a CPU)
    python -m bench.inference_throughput --preset demo --num_threads 1   # tiny demo model, 64 px, demo test split
    python -m bench.inference_throughput --preset sd35-medium --data_dir data/Trans10k   # full size, bf16: CUDA only

Per batch, in the main thread and in this order (as predict.py / val_inference.py do, minus the DataLoader): load
and resize the JPEGs (dataset.trans10k.load_image, as predict.py), encode (models.segmenter.encode_latents), one
transformer step (MaskPredictor.predict_latents), decode (decode_raw_mask), then per image: resize the raw mask to
the native size, convert to 8-bit and write <subset>/<stem>.png. "sync" writes the PNGs in the main thread; "async"
hands them to evaluation.image_writer.BackgroundImageWriter (predict.py's writer) and waits for it at the end. The
device is synchronised at each stage boundary so stages can be timed; end-to-end images/s covers the whole pass
including the final wait for pending writes. Models are randomly initialised from the preset's config (speed does
not depend on the weights); each (batch size, writer) row runs one untimed warm-up batch and then --repeats
timed passes over the images, and reports the pass with the median wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import (
    Preset,
    add_preset_arguments,
    build_transformer,
    build_vae,
    mask_predictor,
    preset_and_device,
    run_header,
    synchronize,
)
from dataset.trans10k import Sample, find_samples, load_image
from dataset.transforms import IMAGE_RESAMPLE, image_to_tensor, resize_raw
from evaluation.image_writer import BackgroundImageWriter, raw_to_png_array
from models.segmenter import MaskPredictor, decode_raw_mask, encode_latents
from utils.tables import markdown_table

STAGES = ("load", "encode", "predict", "decode", "save")
DEFAULT_BATCH_SIZES = {"demo": [1, 8, 32], "sd35-medium": [1, 4, 8]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_preset_arguments(parser, default_preset="demo")
    parser.add_argument("--data_dir", type=Path, default=Path("demo_assets/trans10k"), help="Trans10k-layout root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=None, help="first N images of the split; default all")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default: demo 1 8 32, sd35 1 4 8")
    parser.add_argument("--writer", nargs="+", choices=("sync", "async"), default=["sync", "async"])
    parser.add_argument("--writer_workers", type=int, default=2, help="BackgroundImageWriter threads (async)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row; the median one is reported")
    parser.add_argument("--output_dir", type=Path, default=None, help="where PNGs go; default a temporary folder")
    return parser.parse_args(argv)


@dataclass
class Pass:
    """One timed pass over all images."""

    images: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES + ("drain",), 0.0))

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@contextmanager
def timed(record: Pass, stage: str, device: torch.device) -> Iterator[None]:
    """Add the block's wall time to `record` under `stage`, synchronising the device at the end."""
    start = time.perf_counter()
    yield
    synchronize(device)
    record.stage_seconds[stage] += time.perf_counter() - start


def build_predictor(preset: Preset, device: torch.device) -> MaskPredictor:
    """VAE and transformer in the preset's inference dtype (predict.py: bf16 on CUDA for sd35-medium)."""
    vae = build_vae(preset.vae_config, device, preset.frozen_dtype)
    transformer = build_transformer(preset.transformer_config, device, preset.frozen_dtype).requires_grad_(False)
    return mask_predictor(preset, vae, transformer.eval(), device, preset.frozen_dtype)


def load_batch(samples: Sequence[Sample], resolution: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(pixels [B, 3, R, R] in [-1, 1], native (height, width) per image), as predict.py prepares images."""
    tensors, sizes = [], []
    for sample in samples:
        image = load_image(sample.image_path)
        sizes.append((image.height, image.width))
        tensors.append(image_to_tensor(image.resize((resolution, resolution), IMAGE_RESAMPLE)))
    return torch.stack(tensors), sizes


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)  # BackgroundImageWriter's default level


def run_pass(
    predictor: MaskPredictor,
    samples: Sequence[Sample],
    batch_size: int,
    resolution: int,
    writer_mode: str,
    args: argparse.Namespace,
    out_dir: Path,
    device: torch.device,
) -> Pass:
    record = Pass()
    writer = BackgroundImageWriter(max_workers=args.writer_workers) if writer_mode == "async" else None
    start = time.perf_counter()
    with torch.inference_mode(), writer or nullcontext():
        for first in range(0, len(samples), batch_size):
            batch = samples[first : first + batch_size]
            with timed(record, "load", device):
                pixels, sizes = load_batch(batch, resolution)
                pixels = pixels.to(device)
            with timed(record, "encode", device):
                image_latents = encode_latents(predictor.vae, pixels)
            with timed(record, "predict", device):
                mask_latents = predictor.predict_latents(image_latents)
            with timed(record, "decode", device):
                raws = decode_raw_mask(predictor.vae, mask_latents)
            with timed(record, "save", device):
                for raw, size, sample in zip(raws, sizes, batch, strict=True):
                    array = raw_to_png_array(resize_raw(raw, size))
                    path = out_dir / sample.subset / f"{sample.stem}.png"
                    if writer is not None:
                        writer.submit(path, array)
                    else:
                        write_png(path, array)
            record.images += len(batch)
        drain_start = time.perf_counter()
    record.stage_seconds["drain"] = time.perf_counter() - drain_start  # leaving the writer waits for pending PNGs
    record.seconds = time.perf_counter() - start
    return record


def measure_row(
    predictor: MaskPredictor,
    samples: Sequence[Sample],
    batch_size: int,
    writer_mode: str,
    args: argparse.Namespace,
    out_dir: Path,
    device: torch.device,
    resolution: int,
) -> Pass:
    """One untimed warm-up batch, then --repeats timed passes; the pass with the median wall time."""
    run_pass(predictor, samples[:batch_size], batch_size, resolution, writer_mode, args, out_dir / "warmup", device)
    passes = [
        run_pass(predictor, samples, batch_size, resolution, writer_mode, args, out_dir / writer_mode, device)
        for _ in range(args.repeats)
    ]
    return sorted(passes, key=lambda p: p.seconds)[len(passes) // 2]


def results_table(rows: Sequence[tuple[int, str, Pass]]) -> str:
    headers = ("batch", "PNG writing", "images/s", *(f"{s} (ms/img)" for s in STAGES), "final wait (ms/img)")
    cells = []
    for batch_size, writer_mode, record in rows:
        per_image = [1000 * record.stage_seconds[s] / record.images for s in (*STAGES, "drain")]
        cells.append([str(batch_size), writer_mode, f"{record.images_per_s:.1f}", *(f"{t:.2f}" for t in per_image)])
    return markdown_table(headers, cells)


def async_speedups(rows: Sequence[tuple[int, str, Pass]]) -> str | None:
    by_key = {(batch, mode): record for batch, mode, record in rows}
    cells = [
        [str(batch), f"{by_key[(batch, 'async')].images_per_s / record.images_per_s:.2f}x"]
        for (batch, mode), record in by_key.items()
        if mode == "sync" and (batch, "async") in by_key
    ]
    return markdown_table(("batch", "async / sync images/s"), cells) if cells else None


def find_images(args: argparse.Namespace) -> list[Sample]:
    if not args.data_dir.is_dir():
        raise SystemExit(
            f"--data_dir {args.data_dir} not found; build the demo data with `python -m demo.assets` "
            "(1-2 minutes on a CPU) or pass a Trans10k root"
        )
    samples = find_samples(args.data_dir, args.split)
    return samples[: args.num_images] if args.num_images else samples


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    preset, device = preset_and_device(args)
    samples = find_images(args)
    batch_sizes = args.batch_sizes or DEFAULT_BATCH_SIZES[preset.name]
    print(run_header(f"# Inference throughput, preset {preset.name}", device))
    print(
        f"{len(samples)} images from {args.data_dir} ({args.split}), model at {preset.resolution} px, "
        f"{preset.frozen_dtype}; async writer: {args.writer_workers} threads; median of {args.repeats} passes\n",
        flush=True,
    )
    predictor = build_predictor(preset, device)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        out_dir = args.output_dir or Path(temporary)
        for batch_size in batch_sizes:
            for writer_mode in args.writer:
                print(f"batch {batch_size}, {writer_mode} PNG writing ...", flush=True)
                record = measure_row(
                    predictor, samples, batch_size, writer_mode, args, out_dir, device, preset.resolution
                )
                rows.append((batch_size, writer_mode, record))
    print()
    print(results_table(rows))
    speedups = async_speedups(rows)
    if speedups:
        print("\nAsync vs sync PNG writing (same run)\n")
        print(speedups)
    print(
        "\nStage times are per image and add up to the wall time of the pass; with async writing, 'save' is the "
        "resize + 8-bit conversion + hand-off and 'final wait' the time spent waiting for pending writes at the end."
    )


if __name__ == "__main__":
    main()
