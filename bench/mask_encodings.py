"""How well a VAE's round trip keeps the things / stuff classes under candidate mask encodings (mask_classes).

    python -m bench.mask_encodings [--model demo_assets/sd35-tiny] [--data demo_assets/trans10k] [--resolution 64]

Each test mask is resized (nearest) to resolution, encoded as each candidate's three codes (background, things,
stuff: one pixel value per channel), passed through the VAE (encode, mode, normalise, un-normalise, decode: the
latents the transformer is trained on) and read back pixel by pixel as the nearest of the three codes. Prints the
IoU of things, stuff and transparent (things or stuff) per encoding. The chosen encoding is dataset.transforms'
(grey levels); its own read-back rule (raw = min(1, 2m), stuff when m > 3/4) is what `val_inference.py --oracle
vae_roundtrip --mask_classes things_stuff` scores.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL

from bench.common import run_header
from dataset.trans10k import find_samples, load_mask_grey
from dataset.transforms import MASK_RESAMPLE, grey_to_classes
from models.segmenter import encode_latents, vae_scale_latents
from utils.tables import markdown_table

# label -> the (R, G, B) value in [-1, 1] of background, things and stuff
ENCODINGS = {
    "grey levels -1 / 0 / +1 (chosen)": ((-1, -1, -1), (0, 0, 0), (1, 1, 1)),
    "colour channels: R transparent, G things, B stuff": ((-1, -1, -1), (1, 1, -1), (1, -1, 1)),
    "R, G transparent, B stuff": ((-1, -1, -1), (1, 1, -1), (1, 1, 1)),
    "R, B transparent, G stuff": ((-1, -1, -1), (1, -1, 1), (1, 1, 1)),
}


def iou(predicted: np.ndarray, target: np.ndarray) -> float:
    union = (predicted | target).sum()
    return float((predicted & target).sum() / union) if union else 1.0


@torch.no_grad()
def read_back(vae: AutoencoderKL, classes: np.ndarray, codes: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """classes [N, H, W] -> the VAE round trip of their encoding, each pixel the index of its nearest code."""
    result = []
    for start in range(0, len(classes), batch_size):
        pixels = torch.from_numpy(codes[classes[start : start + batch_size]].transpose(0, 3, 1, 2).copy())
        decoded = vae.decode(vae_scale_latents(vae, encode_latents(vae, pixels))).sample.clamp(-1, 1)
        decoded = decoded.float().permute(0, 2, 3, 1).numpy()
        result.append(((decoded[..., None, :] - codes) ** 2).sum(-1).argmin(-1))
    return np.concatenate(result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo_assets/sd35-tiny", help="a folder with vae/ (SD3.5 layout)")
    parser.add_argument("--data", default="demo_assets/trans10k", help="a Trans10k-layout dataset")
    parser.add_argument("--resolution", type=int, default=64)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print(run_header("# VAE round trip of the things / stuff mask encodings", torch.device("cpu")))
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae").eval()
    side = (args.resolution, args.resolution)
    samples = find_samples(args.data, "test")
    classes = np.stack(
        [grey_to_classes(np.array(load_mask_grey(s.mask_path).resize(side, MASK_RESAMPLE))) for s in samples]
    )
    rows = []
    for label, codes in ENCODINGS.items():
        predicted = read_back(vae, classes, np.array(codes, dtype=np.float32))
        scores = [iou(predicted == c, classes == c) for c in (1, 2)] + [iou(predicted > 0, classes > 0)]
        rows.append([label, *(f"{score:.3f}" for score in scores)])
    print(f"\n{len(samples)} test masks of {args.data} at {args.resolution} px, VAE of {args.model}\n")
    print(markdown_table(["encoding", "things IoU", "stuff IoU", "transparent IoU"], rows))


if __name__ == "__main__":
    main()
