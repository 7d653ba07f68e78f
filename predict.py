"""Segment transparent objects in your own images with a trained transformer.

    python predict.py --transformer_path OUTPUT_DIR --input IMAGE_OR_DIR --output DIR

Each image, of any size, is turned upright (EXIF orientation) and resized whole to resolution x resolution, with no
crop or flip: the resize evaluation uses (dataset.trans10k.model_pixels). The raw prediction is resized back
(bilinear) to the upright image's native size and thresholded there. Per image writes <stem>_mask.png (binary 0/255),
<stem>_raw.png (round(255 * raw)) and <stem>_overlay.png (transparent regions tinted red).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dataset.trans10k import ImageFiles, eval_collate
from dataset.transforms import resize_raw
from evaluation.image_writer import BackgroundImageWriter, raw_to_png_array
from models.loading import inference_dtype
from models.segmenter import load_predictor
from utils.config import load_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(input_path: Path) -> list[Path]:
    if input_path.is_file():
        return [input_path]
    if input_path.is_dir():
        images = sorted(p for p in input_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images
        raise FileNotFoundError(f"--input {input_path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    raise FileNotFoundError(f"--input {input_path}: no such file or folder")


def overlay(image: np.ndarray, binary: np.ndarray) -> Image.Image:
    """The image with transparent regions tinted red."""
    tinted = image.astype(np.float32)
    tinted[binary] = 0.5 * tinted[binary] + 0.5 * np.array([255, 0, 0], dtype=np.float32)
    return Image.fromarray(tinted.round().astype(np.uint8))


def main() -> None:
    args = load_config()
    if args.input is None or args.output is None:
        print("predict.py: error: --input IMAGE_OR_DIR and --output DIR are required", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = inference_dtype(args.mixed_precision, device)
    predictor = load_predictor(args, args.transformer_path or args.output_dir, device, dtype)
    loader = torch.utils.data.DataLoader(
        ImageFiles(list_images(Path(args.input)), args.resolution),
        batch_size=args.eval_batch_size,
        collate_fn=eval_collate,
        num_workers=args.dataloader_num_workers,
    )
    out_dir = Path(args.output)
    with BackgroundImageWriter() as writer, torch.inference_mode():
        for batch in tqdm(loader, desc="predict"):
            raws = predictor.predict_raw(batch["pixel_values"].to(device))
            for raw, image, stem in zip(raws, batch["image"], batch["stem"], strict=True):
                native = resize_raw(raw, image.shape[:2])
                binary = (native >= args.threshold).cpu().numpy()
                writer.submit(out_dir / f"{stem}_raw.png", raw_to_png_array(native))
                writer.submit(out_dir / f"{stem}_mask.png", binary.astype(np.uint8) * 255)
                writer.submit(out_dir / f"{stem}_overlay.png", overlay(image, binary))
    print(f"wrote {len(loader.dataset)} predictions to {out_dir}")


if __name__ == "__main__":
    main()
