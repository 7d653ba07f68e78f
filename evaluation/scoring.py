"""Score model output against Trans10k ground truth: one code path for trainer validation and val_inference.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dataset.transforms import MASK_RESAMPLE, planes_to_classes, resize_raw
from evaluation.metrics import ImageScore, binarize_gt, score_image

PROTOCOLS = ("native", "square", "seed", "translab")
TRANSLAB_SIDE = 512  # TransLab's evaluation resizes ground truth and prediction to 512 x 512 (TRAIN.BASE_SIZE)


def gt_binary_at(gt_classes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary ground truth (any non-zero class) at `size` (H, W), on the input's device.

    A resize is PIL's NEAREST (pixel-centre sampling), the resize the dataset applies to the masks the model is trained
    and validated on, so the square protocol scores against exactly that target."""
    binary = binarize_gt(gt_classes)
    if tuple(binary.shape) == tuple(size):
        return binary
    # Not F.interpolate: "nearest" samples each output pixel's top-left corner, not its centre; "nearest-exact" is
    # pixel-centre but breaks exact ties (a whole-number source coordinate, e.g. 64 -> 23 px) the other way from PIL's
    # fixed-point arithmetic.
    resized = Image.fromarray(binary.cpu().numpy().astype(np.uint8)).resize((size[1], size[0]), MASK_RESAMPLE)
    return torch.from_numpy(np.array(resized) > 0).to(binary.device)


def quantize(raw: torch.Tensor) -> torch.Tensor:
    """Score exactly the 8-bit values that raw/ PNGs store, so re-scoring saved predictions reproduces the metrics."""
    return (raw.float() * 255).round() / 255


def scored_size(protocol: str, gt_size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(H, W) a protocol scores at: the GT's own size (native), the model's square (square, seed), 512 (translab)."""
    if protocol == "native":
        return gt_size
    if protocol in ("square", "seed"):
        return (resolution, resolution)
    if protocol == "translab":
        return (TRANSLAB_SIDE, TRANSLAB_SIDE)
    raise ValueError(f"unknown eval_protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def scoring_pair(
    raw: torch.Tensor, gt_classes: torch.Tensor, protocol: str, resolution: int, quantize_raw: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, gt_binary) at the size a protocol scores at (``scored_size``).

    The raw prediction is resized bilinearly (``resize_raw``) and the ground truth with PIL nearest, each only when
    not at that size already. ``quantize_raw`` scores the 8-bit values raw/ stores (model outputs); predictions read
    from files are scored at the precision of their file instead (16-bit, RGB mean).
    """
    size = scored_size(protocol, tuple(gt_classes.shape), resolution)
    raw = raw if tuple(raw.shape) == size else resize_raw(raw, size)
    raw = quantize(raw) if quantize_raw else raw.float()
    return raw, gt_binary_at(gt_classes, size).to(raw.device)


def score_batch(
    raws: torch.Tensor | Sequence[torch.Tensor],
    batch: dict,
    threshold: float,
    protocol: str,
    resolution: int,
    quantize_raw: bool = True,
) -> tuple[list[ImageScore], list[torch.Tensor], list[torch.Tensor]]:
    """Per-image scores plus the (raw, gt_binary) pairs exactly as scored. The seed protocol thresholds strictly."""
    scores, scored_raws, gts = [], [], []
    for i, gt_classes in enumerate(batch["gt_classes"]):
        raw, gt = scoring_pair(raws[i], gt_classes, protocol, resolution, quantize_raw)
        strict = protocol == "seed"
        scores.append(score_image(raw, gt, threshold, batch["stem"][i], batch["subset"][i], strict=strict))
        scored_raws.append(raw)
        gts.append(gt)
    return scores, scored_raws, gts


def class_map_at(planes: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """uint8 class map [H, W] at ``size`` from things_stuff prediction planes [2, h, w] (raw, stuff share): both
    resized as raw masks are, the raw quantized as scored, then dataset.transforms.planes_to_classes."""
    raw, stuff_share = (plane if tuple(plane.shape) == tuple(size) else resize_raw(plane, size) for plane in planes)
    return planes_to_classes(quantize(raw), stuff_share.float(), threshold)
