"""Independent plain-numpy implementations the evaluation tests compare against (tests/ is on sys.path: conftest).

Written from the published definitions, in a different way from the code under test:

- Boundary IoU: the authors' reference algorithm (bowenc0221/boundary-iou-api, ``mask_to_boundary``): pad the mask
  with one zero pixel, erode it ``d`` times with a 3x3 kernel (cv2.erode ignores pixels outside the padded array),
  crop, and subtract the erosion from the mask. cv2 is not installed here, so the 3x3 erosion is nine shifted minima.
- TransLab: the per-class loops of segmentron/utils/score.py (``batch_intersection_union``, ``batch_pix_accuracy``,
  ``batch_mae``, ``batch_ber``) on class-index arrays, one image at a time.
"""

from __future__ import annotations

import math

import numpy as np


def reference_mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))
    padded = np.pad(mask.astype(np.uint8), 1, constant_values=0)
    for _ in range(dilation):
        # cv2.erode's default border: pixels outside the (padded) array never lower the minimum.
        border = np.pad(padded, 1, constant_values=1)
        shifted = [border[dy : dy + padded.shape[0], dx : dx + padded.shape[1]] for dy in range(3) for dx in range(3)]
        padded = np.minimum.reduce(shifted)
    eroded = padded[1 : height + 1, 1 : width + 1]
    return mask.astype(np.uint8) - eroded


def reference_boundary_counts(predicted: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(intersection, union) of the two boundary regions, as boundary_iou() of the reference code counts them."""
    gt_boundary, predicted_boundary = reference_mask_to_boundary(gt), reference_mask_to_boundary(predicted)
    intersection = int(((gt_boundary * predicted_boundary) > 0).sum())
    union = int(((gt_boundary + predicted_boundary) > 0).sum())
    return intersection, union


def reference_translab(images: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict[str, float | None]:
    """TransLab's metrics over (gt, prediction) class-index pairs of one subset, per-class loops as in score.py."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    correct = labeled = 0
    maes: list[float] = []
    bers: dict[int, list[float]] = {c: [] for c in range(1, num_classes)}
    for gt, predicted in images:
        for c in range(num_classes):
            inter[c] += np.sum((gt == c) & (predicted == c))
            union[c] += np.sum((gt == c) | (predicted == c))
        labeled += np.sum(gt > 0)
        correct += np.sum((predicted == gt) & (gt > 0))
        maes.append(float(np.mean(np.abs(predicted.astype(float) - gt.astype(float)))))
        for c in range(1, num_classes):
            valid = gt == c
            if not valid.any():
                continue
            tp = np.sum((predicted == gt) & valid)
            tn = np.sum((predicted == gt) & ~valid)
            n_p, n_n = valid.sum(), (~valid).sum()
            tn_rate = tn / n_n if n_n else 1.0
            bers[c].append(100 * (1 - 0.5 * (tp / n_p + tn_rate)))
    iou = [inter[c] / union[c] if union[c] else 1.0 for c in range(num_classes)]
    per_class_ber = [float(np.mean(bers[c])) if bers[c] else None for c in range(1, num_classes)]
    return {
        "iou": iou,
        "miou": float(np.mean(iou[1:])),
        "acc": correct / labeled if labeled else 1.0,
        "mae": float(np.mean(maes)),
        "ber": per_class_ber,
        "mber": None if None in per_class_ber else float(np.mean(per_class_ber)),
    }
