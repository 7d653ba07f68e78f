"""PNG writing cost of predict.py's outputs at 1024x768: encoder settings, then writer threads and processes.

    python -m bench.mask_writing [--width 1024 --height 768 --repeats 7 --count 24]

Contents (all 1024x768, seeded): "binary mask" (0/255 blobs with curved edges, as <stem>_mask.png), "raw, trained"
(a sigmoid of a smooth field: mostly near 0 or 1 with soft edges, as a trained model's <stem>_raw.png), "raw, random
model" (uniform noise at 64x64 upsampled bilinearly: the content of the 53 ms row of the inference bench), and
"overlay" (a photo-like RGB image: smooth gradients plus sensor-like noise, as <stem>_overlay.png).

Table 1 encodes each content in memory with each setting (Pillow's, and the writer's own encode_png), one thread
(median CPU and wall time of --repeats), and checks that the file decodes to the same array and mode. Table 2 writes
--count files of each content to disk through evaluation.image_writer.BackgroundImageWriter (encode_png) with 1 and
2 threads, and through a process pool, and reports wall time per file including the final wait.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import median, run_header
from evaluation.image_writer import BackgroundImageWriter, encode_png
from utils.tables import markdown_table

# label -> Image.save keyword arguments; "mode 1" additionally stores the binary mask as a 1-bit image, and "numpy"
# uses evaluation.image_writer.encode_png (Sub filter on every row, zlib level 1, Z_RLE) instead of Pillow.
SETTINGS: dict[str, dict] = {
    "encode_png: Sub filter, level 1, Z_RLE (chosen)": {"numpy": True},
    "level 6 (before)": {"compress_level": 6},
    "level 1": {"compress_level": 1},
    "level 0 (stored)": {"compress_level": 0},
    "level 1, Z_RLE": {"compress_level": 1, "compress_type": zlib.Z_RLE},
    "level 6, Z_RLE": {"compress_level": 6, "compress_type": zlib.Z_RLE},
    "level 1, Z_HUFFMAN_ONLY": {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY},
    "mode 1, level 6": {"compress_level": 6, "bilevel": True},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=7, help="timed encodes per (content, setting)")
    parser.add_argument("--count", type=int, default=24, help="files per content in the writer table")
    return parser.parse_args(argv)


def contents(width: int, height: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.normal(size=(1, 1, 12, 16)).astype(np.float32))
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0].numpy()
    noise = torch.from_numpy(rng.random((1, 1, 64, 64), dtype=np.float32))
    random_raw = F.interpolate(noise, (height, width), mode="bilinear", align_corners=False)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    smooth = 127 + 100 * np.sin(np.stack([x * 3, y * 4 + 1, (x + y) * 2 + 2], axis=-1))
    return {
        "binary mask": (field > 0.6).astype(np.uint8) * 255,
        "raw, trained": np.round(255 / (1 + np.exp(-8 * field))).astype(np.uint8),
        "raw, random model": np.round(random_raw[0, 0].numpy() * 255).astype(np.uint8),
        "overlay": np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8),
    }


def encode(array: np.ndarray, setting: dict) -> bytes:
    if setting.get("numpy"):
        return encode_png(array)
    options = dict(setting)
    image = Image.fromarray(array > 0) if options.pop("bilevel", False) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def decodes_to(data: bytes, array: np.ndarray) -> str:
    """'same' when the PNG decodes to the same mode-L/RGB array, else what differs."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != ("L" if array.ndim == 2 else "RGB"):
            return f"mode {image.mode}"
        return "same" if np.array_equal(np.asarray(image), array) else "pixels differ"


def seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median CPU seconds of this thread, median wall seconds) per call. On a shared machine the CPU time is the
    steadier measure of the encoder's cost: time spent waiting for a core does not count."""
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return median(cpu), median(wall)


def encoder_rows(images: dict[str, np.ndarray], repeats: int) -> list[list[object]]:
    rows = []
    for name, array in images.items():
        for label, setting in SETTINGS.items():
            if setting.get("bilevel") and name != "binary mask":
                continue
            data = encode(array, setting)
            cpu, wall = seconds(lambda a=array, s=setting: encode(a, s), repeats)
            cells = [f"{1000 * cpu:.1f}", f"{1000 * wall:.1f}", f"{len(data) / 1024:.0f}", decodes_to(data, array)]
            rows.append([name, label, *cells])
            print(f"{name}, {label}: {1000 * cpu:.1f} ms CPU, {1000 * wall:.1f} ms wall", flush=True)
    return rows


def _save(path: Path, array: np.ndarray) -> None:
    path.write_bytes(encode_png(array))


def writer_ms(array: np.ndarray, count: int, folder: Path, threads: int | None, processes: int | None) -> float:
    """Wall ms per file for ``count`` writes, through BackgroundImageWriter (threads) or a process pool."""
    start = time.perf_counter()
    if threads is not None:
        with BackgroundImageWriter(max_workers=threads) as writer:
            for index in range(count):
                writer.submit(folder / f"{index}.png", array)
    else:
        with ProcessPoolExecutor(max_workers=processes) as pool:
            list(pool.map(_save, [folder / f"{index}.png" for index in range(count)], [array] * count))
    return 1000 * (time.perf_counter() - start) / count


def writer_rows(images: dict[str, np.ndarray], count: int) -> list[list[object]]:
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for name, array in images.items():
            cells = [
                writer_ms(array, count, Path(temporary), threads, processes)
                for threads, processes in ((1, None), (2, None), (None, 2))
            ]
            rows.append([name, *(f"{ms:.1f}" for ms in cells)])
            print(f"{name}: " + ", ".join(f"{ms:.1f}" for ms in cells) + " ms per file", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    images = contents(args.width, args.height)
    print(run_header(f"PNG writing, {args.width}x{args.height}", torch.device("cpu")))
    encoders = encoder_rows(images, args.repeats)
    writers = writer_rows(images, args.count)
    print(f"\nEncode in memory, one thread, median of {args.repeats}:\n")
    print(markdown_table(["content", "setting", "CPU ms", "wall ms", "KiB", "decodes to"], encoders))
    print(f"\nWritten to disk with encode_png, wall ms per file over {args.count} files:\n")
    print(markdown_table(["content", "writer, 1 thread", "writer, 2 threads", "2 processes"], writers))


if __name__ == "__main__":
    main()
