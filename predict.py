"""Segment transparent objects in your own images with a trained transformer.

    python predict.py --transformer_path OUTPUT_DIR --input IMAGE_OR_DIR --output DIR
    python predict.py --transformer_path PIPELINE_DIR --input IMAGE_OR_DIR --output DIR   # a folder from export.py

Prediction runs through models.pipeline.TransparencySegmentationPipeline, built from the training run (or loaded
from an exported folder, whose own resolution and settings then apply). Each image, of any size, is turned upright
(EXIF orientation) and fitted into the resolution x resolution canvas as the model was trained (processing: square
resizes it whole, keep_aspect fits its longest side and pads), with no crop: the fit evaluation uses
(dataset.trans10k.model_pixels); --tta hflip averages with the mirror image. The raw prediction, padding cut off, is
resized back (bilinear) to the upright image's native size and thresholded there. Per image writes <name>_mask.png
(binary 0/255), <name>_raw.png (round(255 * raw)) and <name>_overlay.png (transparent regions tinted red), and for a
things/stuff model (mask_classes things_stuff) <name>_classes.png (mode L: 0 background, 1 things, 2 stuff), where
<name> is the file's stem, or, when two inputs share a stem (a.jpg, a.png), the file name with its dots as
underscores (a_jpg, a_png).

Inputs are checked before the model loads: a folder's hidden files (.x, ._x.jpg) and files without an image suffix
are not inputs, an animated image is skipped in a folder (predicted from its first frame when given alone), and
--output may not be --input or inside it. Every readable image is predicted; the unreadable ones are listed at the
end with their reasons, and the exit status is then 1. Wrong arguments exit 2 with one line.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dataset.trans10k import DatasetError, load_image
from dataset.transforms import upright_size
from evaluation.image_writer import BackgroundImageWriter, raw_to_png_array
from models.loading import inference_dtype
from models.pipeline import TransparencySegmentationPipeline, overlay_mask
from models.segmenter import load_predictor
from utils.config import load_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# What Pillow raises on a file it cannot read, beyond the DatasetError our loader wraps it in.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class InputError(ValueError):
    """A wrong --input/--output: reported as one line, exit status 2."""


@dataclass
class Inputs:
    """The images to predict, each with the name its outputs get, and what was set aside before the model loads."""

    images: list[tuple[Path, str]] = field(default_factory=list)  # (file, output name)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    notes: list[str] = field(default_factory=list)


def check_paths(input_path: Path, output_path: Path) -> None:
    if not input_path.exists():
        raise InputError(f"--input {input_path}: no such file or folder")
    if input_path.is_dir():
        inside = output_path.resolve()
        if inside == input_path.resolve() or input_path.resolve() in inside.parents:
            raise InputError(
                f"--output {output_path} is --input {input_path} or inside it: a later run would read these outputs "
                "as inputs; choose an output folder outside the input folder"
            )


def is_hidden(path: Path) -> bool:
    """Dot files, including macOS' AppleDouble sidecars (._photo.jpg), which are not images."""
    return path.name.startswith(".")


def output_names(paths: Sequence[Path]) -> list[str]:
    """The file's stem, unless another input has the same stem (case-insensitively: a.JPG and a.jpg collide on a
    case-insensitive disk); then the whole file name with dots as underscores (a.jpg -> a_jpg)."""
    stems = [path.stem.lower() for path in paths]
    names = [path.name.replace(".", "_") if stems.count(path.stem.lower()) > 1 else path.stem for path in paths]
    lowered = [name.lower() for name in names]
    clashes = sorted({str(path) for path, name in zip(paths, lowered, strict=True) if lowered.count(name) > 1})
    if clashes:
        raise InputError(f"these inputs would write the same output names: {', '.join(clashes)}; rename one of them")
    return names


def probe(path: Path, max_pixels: int) -> tuple[str | None, bool]:
    """(reason the file cannot be predicted or None, whether it is animated), from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = upright_size(image)
            animated = bool(getattr(image, "is_animated", False))
    except _READ_ERRORS as error:
        return f"not a readable image ({error})", False
    if max_pixels and width * height > max_pixels:
        return (
            f"{width}x{height} = {width * height} pixels is more than --max_image_pixels {max_pixels}; pass "
            f"--max_image_pixels {width * height} (or 0 for no limit) to allow it"
        ), False
    return None, animated


def find_inputs(input_path: Path, max_pixels: int) -> Inputs:
    """Every input image with its output name; unreadable and animated files sorted out before the model loads."""
    inputs = Inputs()
    single = input_path.is_file()
    if single:
        candidates = [input_path]
    else:
        entries = sorted(p for p in input_path.iterdir() if p.is_file() and not is_hidden(p))
        candidates = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        if not candidates:
            raise InputError(f"--input {input_path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        if len(entries) > len(candidates):
            others = len(entries) - len(candidates)
            inputs.notes.append(f"{others} file(s) in {input_path} without an image suffix are not inputs")
    readable = []
    for path in candidates:
        reason, animated = probe(path, max_pixels)
        if reason is not None:
            inputs.unreadable.append((path, reason))
        elif animated and not single:
            inputs.notes.append(f"skipped {path}: an animated image (predict it alone for its first frame)")
        else:
            if animated:
                inputs.notes.append(f"{path} is animated: predicting its first frame")
            readable.append(path)
    inputs.images = list(zip(readable, output_names(readable), strict=True))
    return inputs


class Photos(torch.utils.data.Dataset):
    """Decodes in DataLoader workers; a file that fails comes back as its reason instead of stopping the run."""

    def __init__(self, images: Sequence[tuple[Path, str]]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Path, str, np.ndarray | None, str | None]:
        path, name = self.images[index]
        try:
            return path, name, np.asarray(load_image(path)), None
        except DatasetError as error:  # its cause is Pillow's message; the dataset advice does not fit photos
            return path, name, None, str(error.__cause__ or error)


def fail(message: str) -> None:
    print(f"predict.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def report_unreadable(unreadable: Sequence[tuple[Path, str]]) -> None:
    print(f"predict.py: {len(unreadable)} image(s) could not be read and have no outputs:", file=sys.stderr)
    for path, reason in unreadable:
        print(f"  {path}: {reason}", file=sys.stderr)
    print("Convert them (e.g. to 8-bit PNG or JPEG) or move them out of the input, and run again.", file=sys.stderr)


def load_pipeline(args, device: torch.device) -> TransparencySegmentationPipeline:
    """An exported pipeline folder as it is, or the pipeline of a training run (final model or checkpoint)."""
    dtype = inference_dtype(args.mixed_precision, device)
    path = args.transformer_path or args.output_dir
    if (Path(path) / "model_index.json").is_file():
        pipe = TransparencySegmentationPipeline.from_pretrained(path, dtype=dtype).to(device)
    else:
        predictor = load_predictor(args, path, device, dtype)
        pipe = TransparencySegmentationPipeline.from_predictor(
            predictor, args.max_sequence_length, args.resolution, args.processing, args.threshold
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    args = load_config()
    if args.input is None or args.output is None:
        fail("--input IMAGE_OR_DIR and --output DIR are required")
    if args.max_image_pixels < 0:
        fail(f"--max_image_pixels {args.max_image_pixels}: must be >= 0 (0 = no limit)")
    # The pixel limit is checked per file by find_inputs (with advice); Pillow's own guard would only repeat it.
    Image.MAX_IMAGE_PIXELS = None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    input_path, out_dir = Path(args.input), Path(args.output)
    try:
        check_paths(input_path, out_dir)
        inputs = find_inputs(input_path, args.max_image_pixels)
    except InputError as error:
        fail(str(error))
    for note in inputs.notes:
        print(f"predict.py: {note}")
    unreadable = list(inputs.unreadable)
    written = 0
    if inputs.images:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            pipe = load_pipeline(args, device)
        except (FileNotFoundError, ValueError) as error:  # no weights there, or settings that differ from training
            fail(str(error))
        loader = torch.utils.data.DataLoader(
            Photos(inputs.images),
            batch_size=args.eval_batch_size,
            collate_fn=list,
            num_workers=args.dataloader_num_workers,
        )
        with BackgroundImageWriter() as writer, torch.inference_mode():
            for batch in tqdm(loader, desc="predict"):
                unreadable += [(path, reason) for path, _, image, reason in batch if image is None]
                good = [(name, image) for _, name, image, _ in batch if image is not None]
                if not good:
                    continue
                out = pipe(
                    [image for _, image in good],
                    batch_size=len(good),
                    tta=args.tta,  # processing: the pipeline's own, what the weights were trained with
                    threshold=args.threshold,
                    output_type="pt",
                )
                classes = out.classes if out.classes is not None else [None] * len(good)
                for raw, mask, class_map, (name, image) in zip(out.raw, out.mask, classes, good, strict=True):
                    binary = mask.cpu().numpy()
                    writer.submit(out_dir / f"{name}_raw.png", raw_to_png_array(raw))
                    writer.submit(out_dir / f"{name}_mask.png", binary.astype(np.uint8) * 255)
                    writer.submit(out_dir / f"{name}_overlay.png", overlay_mask(image, binary))
                    if class_map is not None:  # mask_classes things_stuff: 0 background, 1 things, 2 stuff
                        writer.submit(out_dir / f"{name}_classes.png", class_map.cpu().numpy())
                    written += 1
    print(f"wrote {written} prediction(s) to {out_dir}")
    if unreadable:
        report_unreadable(sorted(unreadable))
        sys.exit(1)


if __name__ == "__main__":
    main()
