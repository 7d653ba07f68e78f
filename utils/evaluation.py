"""Score model output against Trans10k ground truth: one code path for trainer validation and val_inference.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.metrics import ImageScore, binarize_gt, resize_raw, score_image


def gt_binary_at(gt_classes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary ground truth (any non-zero class) at `size`, resized with nearest neighbour when it differs."""
    binary = binarize_gt(gt_classes)
    if tuple(binary.shape) == tuple(size):
        return binary
    return F.interpolate(binary[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5


def quantize(raw: torch.Tensor) -> torch.Tensor:
    """Score exactly the 8-bit values that raw/ PNGs store, so re-scoring saved predictions reproduces the metrics."""
    return (raw.float() * 255).round() / 255


def scoring_pair(
    raw: torch.Tensor, gt_classes: torch.Tensor, protocol: str, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, gt_binary) at the size a protocol scores at.

    "native": the raw prediction is resized (bilinear) to the ground truth's own size, then thresholded.
    "square": the ground truth is resized (nearest) to resolution x resolution, the seed project's protocol.
    """
    size = tuple(gt_classes.shape) if protocol == "native" else (resolution, resolution)
    raw = raw if tuple(raw.shape) == size else resize_raw(raw, size)
    return quantize(raw), gt_binary_at(gt_classes, size).to(raw.device)


def score_batch(
    raws: torch.Tensor | Sequence[torch.Tensor], batch: dict, threshold: float, protocol: str, resolution: int
) -> tuple[list[ImageScore], list[torch.Tensor], list[torch.Tensor]]:
    """Per-image scores plus the (raw, gt_binary) pairs exactly as scored."""
    scores, scored_raws, gts = [], [], []
    for i, gt_classes in enumerate(batch["gt_classes"]):
        raw, gt = scoring_pair(raws[i], gt_classes, protocol, resolution)
        scores.append(score_image(raw, gt, threshold, batch["stem"][i], batch["subset"][i]))
        scored_raws.append(raw)
        gts.append(gt)
    return scores, scored_raws, gts


def to_uint8_image(pixel_values: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8, for panels."""
    array = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()
