"""The TransLab protocol (``--eval_protocol translab``): Trans10k scored exactly as TransLab's own evaluation does.

Read from xieenze/Segment_Transparent_Objects (commit ef0b99b), the code behind TransLab's published numbers:

- ground truth (``segmentron/data/dataloader/trans10k_boundary.py``, the loader of ``configs/trans10K/translab.yaml``):
  the mean of the mask's first three channels, 85 -> 1 things, 255 -> 2 stuff, 0 stays background; then
  (``seg_data_base.py``, ``_val_sync_transform``) resized to ``TRAIN.BASE_SIZE`` = 512 x 512 with PIL ``NEAREST``.
  TransLab keeps any other mean value <= 2 as a class and asserts on the rest; here any value other than 0, 85 and 255
  is an error naming the file and the values, so a non-official mask never passes unnoticed. Masks with one channel
  (L, or LA whose alpha is ignored) have that value as their mean; P masks are read through their palette.
- metrics (``segmentron/utils/score.py``, ``tools/test_translab.py`` with ``TEST.BATCH_SIZE`` 1, so "per batch" is
  per image):
  * IoU per class from intersections and unions pooled over all images of a subset; ``miou`` = mean over the
    non-background classes (``IoU[1:].mean()``);
  * ``acc``: pixels whose GT is not background and whose prediction equals it, over all non-background GT pixels,
    pooled (``batch_pix_accuracy`` counts ``target > 0`` only);
  * ``mae``: per image, mean |predicted class index - true class index| (``batch_mae``), then the mean over images;
  * ``ber_<class>``: for each image whose GT contains the class, 100 x (1 - (TP/Np + TN/Nn) / 2) with Np its pixels,
    Nn the others, TP its pixels predicted as it and TN the other pixels predicted exactly their own class
    (``batch_ber``), averaged over those images; ``mber`` = mean over the non-background classes.

Differences, on purpose: a ratio with a zero denominator is 1.0 as everywhere in this project (TransLab's eps makes an
IoU 0/0 = 0, and its BER of an image that is all one class NaN); a class that no image of a subset contains has
``ber_<class>`` null and then ``mber`` null, never NaN.

Two versions, never mixed: ``things_stuff`` (classes background / things / stuff, from a class-map prediction) and
``binary`` (background / transparent: GT classes > 0 against a binary prediction), labelled by ``classes`` in every
summary. Everything derives from each image's confusion matrix at 512 x 512, a small picklable ``TranslabScore`` that
gathers across processes like ``ImageScore``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dataset.trans10k import DatasetError, _reading
from dataset.transforms import (
    BACKGROUND_CLASS,
    BACKGROUND_GREY,
    MASK_RESAMPLE,
    STUFF_CLASS,
    STUFF_GREY,
    THINGS_CLASS,
    THINGS_GREY,
    check_mask_mode,
)
from evaluation.scoring import TRANSLAB_SIDE

CLASS_NAMES = {"things_stuff": ("background", "things", "stuff"), "binary": ("background", "transparent")}
# The RGB sums of the official grey levels: a mean of exactly 0, 85 or 255 is an integer sum of 0, 255 or 765.
_SUM_TO_CLASS = {3 * BACKGROUND_GREY: BACKGROUND_CLASS, 3 * THINGS_GREY: THINGS_CLASS, 3 * STUFF_GREY: STUFF_CLASS}


def _channel_sum_x3(mask: Image.Image) -> np.ndarray:
    """int32 [H, W]: 3 x the mean of the mask's colour channels (an exact integer, so comparisons are exact)."""
    if mask.mode in ("L", "LA", "1"):
        return np.asarray(mask.convert("L") if mask.mode == "1" else mask.getchannel(0), dtype=np.int32) * 3
    return np.asarray(mask.convert("RGB"), dtype=np.int32).sum(axis=2)


def classes_from_channel_sums(sums: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8 class map from 3 x channel means; DatasetError naming ``path`` and the values if any is not official."""
    classes = np.full(sums.shape, 255, dtype=np.uint8)
    for total, class_id in _SUM_TO_CLASS.items():
        classes[sums == total] = class_id
    bad = classes == 255
    if bad.any():
        values, counts = np.unique(sums[bad], return_counts=True)
        pairs = list(zip(values.tolist(), counts.tolist(), strict=True))
        listed = ", ".join(f"{v / 3:g} ({c} px)" for v, c in pairs[:8])
        raise DatasetError(
            f"{path}: {int(bad.sum())} mask pixels have an RGB mean other than 0, 85 or 255 (TransLab's classes "
            f"background, things, stuff): {listed}{' ...' if len(values) > 8 else ''}. The translab protocol scores "
            "official Trans10k masks only; fix or replace the mask (`python -m dataset.check ROOT --deep`)."
        )
    return classes


def translab_gt_classes(path: str | Path) -> np.ndarray:
    """uint8 [H, W] classes 0/1/2 of a Trans10k mask by TransLab's rule (upright, at the mask's own size)."""
    path = Path(path)
    with _reading(path, "mask"), Image.open(path) as mask:
        check_mask_mode(mask.mode)
        # Upright like the image the model saw (dataset.transforms.mask_grey_level does the same); TransLab reads
        # PNG masks as stored, and official PNG masks carry no EXIF orientation, so both agree on them.
        sums = _channel_sum_x3(ImageOps.exif_transpose(mask))
    return classes_from_channel_sums(sums, path)


def resize_classes(classes: np.ndarray | torch.Tensor, side: int = TRANSLAB_SIDE) -> np.ndarray:
    """uint8 class map resized to side x side with PIL NEAREST (unchanged when already that size)."""
    array = classes.cpu().numpy() if isinstance(classes, torch.Tensor) else np.asarray(classes)
    array = array.astype(np.uint8, copy=False)
    if array.shape == (side, side):
        return array
    return np.asarray(Image.fromarray(array).resize((side, side), MASK_RESAMPLE))


@dataclass
class TranslabScore:
    """One image's confusion matrix at 512 x 512: ``confusion[t * K + p]`` = pixels of true class t predicted p."""

    stem: str
    subset: str
    classes: str  # "things_stuff" (K = 3) or "binary" (K = 2)
    confusion: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES[self.classes])

    def matrix(self) -> np.ndarray:
        return np.asarray(self.confusion, dtype=np.int64).reshape(self.num_classes, self.num_classes)


def score_translab(
    gt_classes: np.ndarray, predicted_classes: np.ndarray, classes: str, stem: str = "", subset: str = ""
) -> TranslabScore:
    """Confusion matrix of two class maps of one size (values < K)."""
    k = len(CLASS_NAMES[classes])
    gt, predicted = np.asarray(gt_classes).astype(np.int64), np.asarray(predicted_classes).astype(np.int64)
    if gt.shape != predicted.shape:
        raise ValueError(f"class maps differ in size: gt {gt.shape}, prediction {predicted.shape}")
    if gt.size and (gt.max() >= k or predicted.max() >= k):
        raise ValueError(
            f"class ids must be < {k} for {classes}, got gt max {gt.max()}, prediction max {predicted.max()}"
        )
    confusion = np.bincount((gt * k + predicted).ravel(), minlength=k * k)
    return TranslabScore(stem, subset, classes, tuple(int(c) for c in confusion))


def _ratio(numerator: float, denominator: float) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def _image_ber(matrix: np.ndarray, class_id: int) -> float | None:
    """TransLab's per-image BER (percent) of one class, None when the image does not contain it."""
    positives = int(matrix[class_id].sum())
    if positives == 0:
        return None
    negatives = int(matrix.sum()) - positives
    true_positive = int(matrix[class_id, class_id])
    true_negative = int(np.trace(matrix)) - true_positive  # other pixels predicted exactly their own class
    return 100.0 * (1.0 - (_ratio(true_positive, positives) + _ratio(true_negative, negatives)) / 2.0)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def summarize_translab(scores: Sequence[TranslabScore]) -> dict:
    """The TransLab metrics of one subset (see the module docstring); IoU/acc fractions, BER in percent."""
    if not scores:
        raise ValueError("cannot summarize zero images")
    kinds = {s.classes for s in scores}
    if len(kinds) != 1:
        raise ValueError(f"binary and things_stuff scores cannot be mixed in one summary, got {sorted(kinds)}")
    classes = kinds.pop()
    names = CLASS_NAMES[classes]
    matrices = [s.matrix() for s in scores]
    pooled = np.sum(matrices, axis=0)
    summary: dict = {"classes": classes, "num_images": len(scores)}
    for class_id, name in enumerate(names):
        union = pooled[class_id].sum() + pooled[:, class_id].sum() - pooled[class_id, class_id]
        summary[f"iou_{name}"] = _ratio(int(pooled[class_id, class_id]), int(union))
    summary["miou"] = _mean_or_none([summary[f"iou_{name}"] for name in names[1:]])
    summary["acc"] = _ratio(int(np.trace(pooled[1:, 1:])), int(pooled[1:].sum()))
    distance = np.abs(np.subtract.outer(np.arange(len(names)), np.arange(len(names))))
    summary["mae"] = math.fsum(float((m * distance).sum()) / m.sum() for m in matrices) / len(matrices)
    for class_id, name in enumerate(names[1:], start=1):
        bers = [ber for ber in (_image_ber(m, class_id) for m in matrices) if ber is not None]
        summary[f"ber_{name}"] = _mean_or_none(bers)
    class_bers = [summary[f"ber_{name}"] for name in names[1:]]
    summary["mber"] = None if None in class_bers else _mean_or_none(class_bers)
    return summary


def summarize_translab_subsets(scores: Sequence[TranslabScore]) -> dict[str, dict]:
    """One TransLab summary per subset present (easy, hard first), then "mix" over all images."""
    names = {s.subset for s in scores if s.subset}
    ordered = [n for n in ("easy", "hard") if n in names] + sorted(names - {"easy", "hard"})
    summaries = {name: summarize_translab([s for s in scores if s.subset == name]) for name in ordered}
    summaries["mix"] = summarize_translab(scores)
    return summaries


def binary_classes(raw_at_side: torch.Tensor, threshold: float) -> np.ndarray:
    """The two-class prediction (1 = transparent) of a raw map already at 512 x 512: ``raw >= threshold``."""
    return (raw_at_side.detach().cpu() >= threshold).numpy().astype(np.uint8)
