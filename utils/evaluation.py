"""Score model output against Trans10k ground truth: one code path for trainer validation and val_inference.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.metrics import ImageScore, resize_raw, score_image


def gt_binary_at(gt_classes: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Binary ground truth (any non-zero class), optionally resized with nearest neighbour to `size`."""
    binary = gt_classes > 0
    if size is None or tuple(binary.shape) == tuple(size):
        return binary
    resized = F.interpolate(binary[None, None].float(), size=size, mode="nearest")[0, 0]
    return resized > 0.5


def score_batch(
    raw: torch.Tensor, batch: dict, threshold: float, protocol: str
) -> tuple[list[ImageScore], list[torch.Tensor]]:
    """Per-image scores and the raw predictions at the size they were scored at.

    protocol "native": the raw prediction is resized (bilinear) to each ground truth's own size, then thresholded.
    protocol "square": the ground truth is resized (nearest) to the model's square resolution (the seed's protocol).
    """
    scores, raws = [], []
    for i, gt_classes in enumerate(batch["gt_classes"]):
        if protocol == "native":
            raw_i, gt_i = resize_raw(raw[i], tuple(gt_classes.shape)), gt_classes > 0
        else:
            raw_i, gt_i = raw[i], gt_binary_at(gt_classes, tuple(raw[i].shape))
        scores.append(score_image(raw_i, gt_i.to(raw_i.device), threshold, batch["stem"][i], batch["subset"][i]))
        raws.append(raw_i)
    return scores, raws


def to_uint8_image(pixel_values: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8, for panels."""
    array = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()
