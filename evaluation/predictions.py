"""Reading any method's saved predictions for ``val_inference.py --predictions_dir DIR``.

Layout: ``DIR/<subset>/<stem>.png``, or ``DIR/<subset>/<stem>_pred.png`` as the seed project names its outputs
(its ``e2e_log_val.py`` writes ``<output_dir>/mask_predictions/test_<difficulty>_<step>/<id>_pred.png``, so linking
``test_easy_<step>`` as ``DIR/easy`` and ``test_hard_<step>`` as ``DIR/hard`` scores them as they are). A stem with
both files is refused: which one to score would be a guess.

Raw predictions (``mask_classes: binary``) are converted to [0, 1] by their PNG mode, and ``metrics.json`` says which
conversions were used:

- ``L`` (8-bit grey): value / 255, exactly what ``raw/`` PNGs store;
- ``RGB`` / ``RGBA``: mean of the three colour channels / 255, alpha ignored (the model's raw mask is the mean of the
  decoded RGB channels, and the seed's ``*_pred.png`` are its decoded RGB images);
- ``I;16`` (16-bit grey, also ``I;16B`` / ``I;16L``): value / 65535.

Any other mode (1-bit, palette, LA, 32-bit integer or float) is refused naming the file. Class maps
(``mask_classes: things_stuff``) are mode-L PNGs holding 0 background, 1 things, 2 stuff; any other value is an error.

Before scoring, ``check_predictions`` reads every header once and raises one ``PredictionError`` listing every
missing file, unsupported mode and prediction whose shape cannot come from its ground truth (another aspect ratio,
e.g. a rotated 93x124 for a 124x93 GT); a prediction at the GT's size, a scaled copy of it, or a square at the
model's ``resolution`` (or 512 x 512 under the translab protocol) is resized to what the protocol scores at, as
model outputs are. A file that fails to decode later (truncated data) raises ``PredictionError`` naming it.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataset.trans10k import Sample, read_image_size
from dataset.transforms import Size

CONVERSIONS = {
    "L": "value / 255",
    "RGB": "mean(R, G, B) / 255",
    "RGBA": "mean(R, G, B) / 255, alpha ignored",
    "I;16": "value / 65535",
    "I;16B": "value / 65535",
    "I;16L": "value / 65535",
}
CLASS_MAP_CONVERSION = "class map: 0 background, 1 things, 2 stuff (binary metrics: class > 0)"
SEED_SUFFIX = "_pred"  # the seed's e2e_log_val.py saves <id>_pred.png
_MAX_LISTED = 20  # problems listed in one error message, then a count
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class PredictionError(ValueError):
    """Prediction files that cannot be scored as they are; the message names every file and what to do."""


def candidate_paths(predictions_dir: str | Path, subset: str, stem: str) -> tuple[Path, Path]:
    folder = Path(predictions_dir) / subset
    return folder / f"{stem}.png", folder / f"{stem}{SEED_SUFFIX}.png"


def prediction_path(predictions_dir: str | Path, subset: str, stem: str) -> Path:
    """The one prediction file of (subset, stem); PredictionError when there is none or two."""
    found = [path for path in candidate_paths(predictions_dir, subset, stem) if path.is_file()]
    if len(found) == 2:
        raise PredictionError(f"two predictions for {subset}/{stem}: {found[0]} and {found[1]}; keep one")
    if not found:
        plain, seed = candidate_paths(predictions_dir, subset, stem)
        raise PredictionError(f"missing prediction {plain} (or {seed.name}): expected <predictions_dir>/<subset>/")
    return found[0]


def _decoded(path: Path) -> Image.Image:
    """The fully decoded image; PredictionError naming the file when it is unreadable or truncated."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except _READ_ERRORS as error:
        raise PredictionError(f"cannot read prediction {path}: {error}; re-export it") from error


def _unsupported(path: Path, mode: str, class_maps: bool) -> str:
    if class_maps:
        return f"{path}: mode {mode}; class maps (mask_classes things_stuff) must be mode L with values 0, 1, 2"
    return f"{path}: mode {mode} is not a supported prediction; use {', '.join(CONVERSIONS)} (see README, Metrics)"


def read_prediction(path: str | Path) -> torch.Tensor:
    """float32 [H, W] in [0, 1] from a raw-prediction PNG, converted by its mode (``CONVERSIONS``)."""
    path = Path(path)
    image = _decoded(path)
    if image.mode not in CONVERSIONS:
        raise PredictionError(_unsupported(path, image.mode, class_maps=False))
    if image.mode in ("RGB", "RGBA"):
        values = np.asarray(image, dtype=np.float64)[:, :, :3].mean(axis=2) / 255.0
    elif image.mode == "L":
        values = np.asarray(image, dtype=np.float64) / 255.0
    else:
        values = np.asarray(image).astype(np.float64) / 65535.0
    return torch.from_numpy(values.astype(np.float32))


def read_class_map(path: str | Path) -> torch.Tensor:
    """uint8 [H, W] class map 0/1/2 from a mode-L PNG; PredictionError naming the file for anything else."""
    path = Path(path)
    image = _decoded(path)
    if image.mode != "L":
        raise PredictionError(_unsupported(path, image.mode, class_maps=True))
    classes = np.asarray(image, dtype=np.uint8)
    bad = classes > 2
    if bad.any():
        values = np.unique(classes[bad]).tolist()
        raise PredictionError(
            f"{path}: {int(bad.sum())} pixels hold values {values[:8]} that are not classes 0, 1, 2 "
            "(mask_classes things_stuff reads class maps; score raw masks with mask_classes binary)"
        )
    return torch.from_numpy(classes.copy())


def _rounds_to(side: int, numerator: int, denominator: int) -> bool:
    """side is numerator / denominator rounded down or up (exact integer arithmetic)."""
    return numerator // denominator <= side <= -(-numerator // denominator)


def _shape_problem(path: Path, size: Size, gt_size: Size, square_sides: Sequence[int]) -> str | None:
    """Why a prediction of ``size`` (W, H) cannot be brought to a GT of ``gt_size``; None when it can."""
    (width, height), (gt_width, gt_height) = size, gt_size
    if size == gt_size or (width == height and width in square_sides):
        return None
    # A scaled copy of the GT: each side is the other scaled by the GT's aspect ratio, rounded down or up.
    if _rounds_to(height, width * gt_height, gt_width) and _rounds_to(width, height * gt_width, gt_height):
        return None
    squares = " or ".join(f"{side}x{side}" for side in square_sides)
    message = (
        f"{path} is {width}x{height} but its ground truth is {gt_width}x{gt_height}: another aspect ratio, "
        f"neither the GT's size, a scaled copy of it, nor {squares} (the protocol's square)"
    )
    if size == gt_size[::-1]:
        message += "; rotated by 90 degrees? (check the EXIF orientation of the image it was predicted from)"
    return message


def _listed(problems: Sequence[str]) -> str:
    shown = [f"  - {problem}" for problem in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        shown.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join(shown)


def check_predictions(
    predictions_dir: str | Path, samples: Sequence[Sample], square_sides: Sequence[int], class_maps: bool
) -> dict:
    """Read every prediction's header; one PredictionError listing all problems, else what metrics.json records:
    {"dir", "kind", "naming": {name: count}, "conversion": {mode: rule}, "images_per_mode": {mode: count}}.

    ``square_sides``: the square sizes accepted besides the GT's aspect ratio (the model's resolution, and 512 under
    the translab protocol)."""
    if not Path(predictions_dir).is_dir():
        raise PredictionError(f"predictions_dir {predictions_dir} is not a folder")
    problems: list[str] = []
    modes: Counter[str] = Counter()
    naming: Counter[str] = Counter()
    for sample in samples:
        try:
            path = prediction_path(predictions_dir, sample.subset, sample.stem)
            with Image.open(path) as image:
                mode, size = image.mode, image.size  # as stored: read_prediction applies no EXIF orientation
        except PredictionError as error:
            problems.append(str(error))
            continue
        except _READ_ERRORS as error:
            problems.append(f"cannot read prediction {path}: {error}")
            continue
        supported = mode == "L" if class_maps else mode in CONVERSIONS
        if not supported:
            problems.append(_unsupported(path, mode, class_maps))
            continue
        shape_problem = _shape_problem(path, size, read_image_size(sample.mask_path), square_sides)
        if shape_problem:
            problems.append(shape_problem)
            continue
        modes[mode] += 1
        seed_named = path == candidate_paths(predictions_dir, sample.subset, sample.stem)[1]
        naming[f"<stem>{SEED_SUFFIX}.png" if seed_named else "<stem>.png"] += 1
    if problems:
        header = f"{len(problems)} of {len(samples)} predictions in {predictions_dir} cannot be scored"
        raise PredictionError(f"{header}:\n{_listed(problems)}")
    conversion = {mode: CLASS_MAP_CONVERSION if class_maps else CONVERSIONS[mode] for mode in sorted(modes)}
    return {
        "dir": str(predictions_dir),
        "kind": "class_map" if class_maps else "raw",
        "naming": dict(naming),
        "conversion": conversion,
        "images_per_mode": dict(sorted(modes.items())),
    }
