"""Trans10kTrain DataLoader throughput (images/s) for several worker counts and resolutions.

Run from the repo root: ``python -m bench.dataloader_throughput [--dataset_path data/Trans10k]``. Without
``--dataset_path`` it writes a temporary synthetic train split of 1024x768 JPEGs (photo-like: smooth gradients plus
sensor-like noise, about the size of a Trans10k photo) and masks, and deletes it afterwards. Prints a Markdown table.

Timing starts after the first batch of each epoch set, so worker start-up is not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataset.synthetic import make_split_dir, write_pair
from dataset.trans10k import TrainSampler, Trans10kTrain, find_samples
from dataset.transforms import STUFF_GREY, THINGS_GREY
from utils.tables import markdown_table

# label -> (random_flip, color_jitter, random_crop_scale)
AUGMENTATIONS = {
    "defaults (flip)": (True, 0.0, 1.0),
    "flip + crop 0.5 + jitter 0.2": (True, 0.2, 0.5),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_path", type=Path, default=None, help="real Trans10k root; default: synthetic")
    parser.add_argument("--num_images", type=int, default=48, help="synthetic images to write")
    parser.add_argument("--image_size", type=int, nargs=2, default=(1024, 768), help="synthetic width height")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1024, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the data per measurement")
    return parser.parse_args(argv)


def write_synthetic_train_split(root: Path, num_images: int, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    folder = make_split_dir(root, "train", None)
    for i in range(num_images):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        smooth = 127 + 100 * np.sin(np.stack([x * 3 + phase[0], y * 4 + phase[1], (x + y) * 2 + phase[2]], axis=-1))
        pixels = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : height // 2, width // 5 : width // 2] = THINGS_GREY
        mask[height // 2 :, width // 2 :] = STUFF_GREY
        write_pair(folder, str(i), Image.fromarray(pixels), Image.fromarray(mask), quality=90)


def images_per_second(dataset: Trans10kTrain, num_workers: int, batch_size: int, epochs: int) -> float:
    sampler = TrainSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    images, start = 0, None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            if start is None:  # the first batch pays for worker start-up
                start = time.perf_counter()
                continue
            images += len(batch["stem"])
    return images / (time.perf_counter() - start)


def print_table(dataset_path: Path, args: argparse.Namespace) -> None:
    """Measure every row, printing a progress line as each finishes, then print the Markdown table."""
    samples = find_samples(dataset_path, "train")
    rows = []
    for resolution in args.resolutions:
        for label, (flip, jitter, crop) in AUGMENTATIONS.items():
            dataset = Trans10kTrain(samples, resolution, flip, jitter, crop, seed=0)
            rates = [images_per_second(dataset, w, args.batch_size, args.epochs) for w in args.workers]
            rows.append([resolution, label, *(f"{rate:.1f}" for rate in rates)])
            print(f"{resolution} px, {label}: " + ", ".join(f"{rate:.1f}" for rate in rates) + " images/s", flush=True)
    print()
    print(markdown_table(["resolution", "augmentation", *(f"{w} workers" for w in args.workers)], rows))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        dataset_path = args.dataset_path
        if dataset_path is None:
            dataset_path = Path(temporary) / "Trans10k"
            write_synthetic_train_split(dataset_path, args.num_images, tuple(args.image_size))
            source = f"synthetic: {args.num_images} JPEGs of {args.image_size[0]}x{args.image_size[1]}"
        else:
            source = str(dataset_path)
        print(f"Trans10kTrain images/s ({source}; batch size {args.batch_size}, {args.epochs} epochs)\n")
        print_table(dataset_path, args)


if __name__ == "__main__":
    main()
