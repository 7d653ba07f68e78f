"""Binary segmentation metrics for transparent-object masks: pixel counts per image, the formulas, and summaries.

Definitions (the README prints the same text):

- GT binary = any non-zero mask value. ``raw`` = model output in [0, 1] (or PNG value / 255);
  binary prediction = ``raw >= threshold`` (default 0.5).
- Per image, from the counts TP, FP, FN, TN: iou = TP/(TP+FP+FN); recall = TP/(TP+FN); precision = TP/(TP+FP);
  f1 = 2TP/(2TP+FP+FN); acc = (TP+TN)/all; ber = 1 - (TPR+TNR)/2 with TPR = recall, TNR = TN/(TN+FP);
  mae = mean |raw - gt|; mse = mean (raw - gt)^2; boundary_iou = Boundary IoU (``evaluation.boundary``: the IoU of
  the pixels of each mask within 2% of the image diagonal of its contour). A ratio whose denominator is 0 is 1.0
  (its numerator is then 0 too: an empty mask predicted empty is perfect, never NaN).
- ``per_image_mean``: mean over images of the per-image metrics. ``dataset``: the same formulas applied to counts
  and error sums pooled over all pixels of all images.
- Scoring happens at each ground truth's native size (``evaluation.scoring``: ``dataset.transforms.resize_raw``
  brings a prediction there before thresholding); the square and seed protocols resize the ground truth to the
  model's resolution instead, the translab protocol to 512 x 512. The seed protocol thresholds with ``raw > 0.5``
  (``strict``), as the seed's ``quantize_prediction`` does; every other protocol with ``raw >= threshold``.
- ``per_image_iou`` (in every summary): quantiles of the per-image IoU and the share of images below 0.4, so a mean
  over a filtered subset of images (the seed's ``proccess_metrics.py`` averages only images with IoU >= 0.4) can be
  recognised and reproduced.

Counting happens in float64 on the prediction's device (error sums are fractional; pixel counts stay exact up to
2**53) and comes back to the host as python ints and floats in an ``ImageScore``.

Gathering across processes: an ``ImageScore`` is a small picklable dataclass, so val_inference.py and the trainer's
validation gather lists of them with ``accelerator.gather_for_metrics(scores, use_gather_object=True)``, which also
drops the duplicated samples of the last batch. The threshold sweep's per-image histograms (``sweep_histogram``) are
int64 tensors of one shape and gather as tensors; ``threshold_sweep`` turns their sum into IoU at every threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evaluation.boundary import boundary_counts

METRIC_NAMES = ("iou", "recall", "precision", "f1", "acc", "ber", "mae", "mse", "boundary_iou")
# Metrics where a larger value is worse (used to pick the worst images).
LOWER_IS_BETTER = frozenset({"ber", "mae", "mse"})
DEFAULT_THRESHOLD = 0.5
# Sweep thresholds 0.01, 0.02, ..., 0.99 (k / 100 gives the double nearest each decimal, unlike an arange).
DEFAULT_SWEEP_THRESHOLDS = tuple(k / 100 for k in range(1, 100))


def _ratio(numerator: int, denominator: int) -> float:
    # Counts are non-negative and numerator <= denominator, so a zero denominator means 0/0: a perfect score.
    return 1.0 if denominator == 0 else numerator / denominator


def metrics_from_counts(
    tp: int,
    fp: int,
    fn: int,
    tn: int,
    abs_err: float,
    sq_err: float,
    num_pixels: int,
    boundary_intersection: int,
    boundary_union: int,
) -> dict[str, float]:
    """Every metric in METRIC_NAMES from confusion counts, error sums and boundary-region counts."""
    if min(tp, fp, fn, tn) < 0:
        raise ValueError(f"counts must be non-negative, got tp={tp} fp={fp} fn={fn} tn={tn}")
    if tp + fp + fn + tn != num_pixels:
        raise ValueError(f"tp+fp+fn+tn = {tp + fp + fn + tn} but num_pixels = {num_pixels}")
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    if not 0 <= boundary_intersection <= boundary_union:
        raise ValueError(f"boundary counts must satisfy 0 <= {boundary_intersection} <= {boundary_union}")
    recall = _ratio(tp, tp + fn)
    true_negative_rate = _ratio(tn, tn + fp)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "recall": recall,
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": (tp + tn) / num_pixels,
        "ber": 1.0 - (recall + true_negative_rate) / 2.0,
        "mae": abs_err / num_pixels,
        "mse": sq_err / num_pixels,
        "boundary_iou": _ratio(boundary_intersection, boundary_union),
    }


@dataclass
class ImageScore:
    """Counts and error sums of one image at the size it was scored at (native or square); a row of per_image.csv."""

    stem: str
    subset: str
    height: int
    width: int
    tp: int
    fp: int
    fn: int
    tn: int
    abs_err: float  # sum over pixels of |raw - gt|
    sq_err: float  # sum over pixels of (raw - gt)^2
    boundary_intersection: int  # pixels in both boundary regions (evaluation.boundary)
    boundary_union: int  # pixels in either boundary region

    @property
    def num_pixels(self) -> int:
        return self.height * self.width

    def metrics(self) -> dict[str, float]:
        return metrics_from_counts(
            self.tp,
            self.fp,
            self.fn,
            self.tn,
            self.abs_err,
            self.sq_err,
            self.num_pixels,
            self.boundary_intersection,
            self.boundary_union,
        )


def binarize_gt(mask: torch.Tensor) -> torch.Tensor:
    """GT binary: any non-zero mask value is foreground (Trans10k marks things and stuff with different values)."""
    return mask != 0


def _as_image_2d(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        return tensor[0]
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be [H, W] or [1, H, W], got shape {tuple(tensor.shape)}")
    return tensor


def _float64_device(tensor: torch.Tensor) -> torch.Tensor:
    # MPS has no float64; every other device (CPU, CUDA) counts in place.
    return tensor.cpu() if tensor.device.type == "mps" else tensor


def check_raw_range(raw: torch.Tensor) -> None:
    """ValueError unless every value lies in [0, 1]. One host sync for both bounds; NaN fails both comparisons."""
    low, high = torch.stack([raw.amin(), raw.amax()]).tolist()
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(f"raw predictions must lie in [0, 1], got min {low} max {high}")


def _sums(raw: torch.Tensor, gt_binary: torch.Tensor, threshold: float, strict: bool) -> list[float]:
    """[tp, fp, fn, tn, abs_err, sq_err, boundary_intersection, boundary_union] of one image (raw and gt [H, W]),
    summed in float64 on raw's device."""
    if not raw.is_floating_point():
        raise TypeError(f"raw must be a float tensor in [0, 1], got dtype {raw.dtype}")
    raw = _float64_device(raw.detach()).to(torch.float64)  # float64 so error sums do not drift
    gt = binarize_gt(gt_binary.detach()).to(raw.device)
    check_raw_range(raw)
    predicted = raw > threshold if strict else raw >= threshold
    counts = [predicted & gt, predicted & ~gt, ~predicted & gt, ~predicted & ~gt]  # tp, fp, fn, tn
    error = raw - gt.to(torch.float64)
    sums = [*(c.sum().to(torch.float64) for c in counts), error.abs().sum(), error.square().sum()]
    return torch.stack(sums).tolist() + list(boundary_counts(predicted, gt))  # float64 counts: exact up to 2**53


def score_image(
    raw: torch.Tensor,
    gt_binary: torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    stem: str = "",
    subset: str = "",
    strict: bool = False,
) -> ImageScore:
    """Score one image: raw float [H, W] in [0, 1] and gt [H, W] (bool, or any dtype where non-zero = foreground).
    The binary prediction is ``raw >= threshold``, or ``raw > threshold`` when ``strict`` (the seed protocol).

    Both must already be at the size scored at: the GT's native size under the native protocol (see
    ``evaluation.scoring.scoring_pair``); [1, H, W] is accepted too. Works on any device; two small host transfers
    (the range check, then the six sums) bring the counts back as python ints.
    """
    if raw.shape != gt_binary.shape:
        raise ValueError(f"raw shape {tuple(raw.shape)} differs from gt shape {tuple(gt_binary.shape)}")
    raw_2d, gt_2d = _as_image_2d(raw, "raw"), _as_image_2d(gt_binary, "gt_binary")
    tp, fp, fn, tn, abs_err, sq_err, boundary_intersection, boundary_union = _sums(raw_2d, gt_2d, threshold, strict)
    height, width = raw_2d.shape
    counts = (round(tp), round(fp), round(fn), round(tn))
    return ImageScore(
        stem, subset, int(height), int(width), *counts, abs_err, sq_err, boundary_intersection, boundary_union
    )


def _pooled_metrics(scores: Sequence[ImageScore]) -> dict[str, float]:
    # Python ints never overflow; fsum adds the float64 error sums without accumulating rounding error.
    return metrics_from_counts(
        sum(s.tp for s in scores),
        sum(s.fp for s in scores),
        sum(s.fn for s in scores),
        sum(s.tn for s in scores),
        math.fsum(s.abs_err for s in scores),
        math.fsum(s.sq_err for s in scores),
        sum(s.num_pixels for s in scores),
        sum(s.boundary_intersection for s in scores),
        sum(s.boundary_union for s in scores),
    )


def _per_image_mean(scores: Sequence[ImageScore]) -> dict[str, float]:
    per_image = [s.metrics() for s in scores]
    return {name: math.fsum(m[name] for m in per_image) / len(per_image) for name in METRIC_NAMES}


# Quantiles of the per-image IoU distribution reported in every summary, and the seed's filter: its
# proccess_metrics.py averages only the images whose IoU is >= 0.4.
IOU_QUANTILES = {"min": 0.0, "p05": 0.05, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
LOW_IOU = 0.4


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default "linear" method) of already sorted values."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def iou_distribution(scores: Sequence[ImageScore]) -> dict:
    """Quantiles of the per-image IoU, the share (and count) of images below LOW_IOU, and the mean over the others."""
    ious = sorted(s.metrics()["iou"] for s in scores)
    kept = [iou for iou in ious if iou >= LOW_IOU]
    return {
        "quantiles": {name: quantile(ious, q) for name, q in IOU_QUANTILES.items()},
        "num_below_0.4": len(ious) - len(kept),
        "share_below_0.4": (len(ious) - len(kept)) / len(ious),
        "mean_of_images_at_least_0.4": math.fsum(kept) / len(kept) if kept else None,
    }


def summarize(scores: Sequence[ImageScore]) -> dict:
    """{"num_images": N, "per_image_mean": {metric: value}, "dataset": {metric: value}, "per_image_iou": {...}}."""
    if not scores:
        raise ValueError("cannot summarize zero images")
    return {
        "num_images": len(scores),
        "per_image_mean": _per_image_mean(scores),
        "dataset": _pooled_metrics(scores),
        "per_image_iou": iou_distribution(scores),
    }


def summarize_subsets(scores: Sequence[ImageScore]) -> dict[str, dict]:
    """One summary per subset present (easy, hard first, others sorted), then "mix" over all scores.

    "mix" is always present, even with a single subset, so a report can always read the overall numbers there.
    Scores with an empty subset name count only towards "mix".
    """
    if not scores:
        raise ValueError("cannot summarize zero images")
    names = {s.subset for s in scores if s.subset}
    if "mix" in names:
        raise ValueError('"mix" is reserved for the summary over all subsets')
    ordered = [n for n in ("easy", "hard") if n in names] + sorted(names - {"easy", "hard"})
    summaries = {name: summarize([s for s in scores if s.subset == name]) for name in ordered}
    summaries["mix"] = summarize(scores)
    return summaries


def worst_k(scores: Sequence[ImageScore], k: int, metric: str = "iou") -> list[ImageScore]:
    """The ``k`` worst images by ``metric`` (lowest for iou/recall/..., highest for ber/mae/mse); ties by stem."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRIC_NAMES}")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    ranked = sorted(scores, key=lambda s: (sign * s.metrics()[metric], s.subset, s.stem))
    return ranked[: max(k, 0)]


# ---------------------------------------------------------------------------------------------------------------------
# Threshold sweep (report only). Each image adds a histogram of its raw values, split by GT, whose bin edges are the
# sweep thresholds themselves: bin b holds pixels with exactly b thresholds <= raw. A pixel is predicted positive at
# threshold k exactly when its bin is > k, so one pass gives exact counts at every threshold, the same that
# score_image would give, with no binning error.
# ---------------------------------------------------------------------------------------------------------------------


def _threshold_tensor(thresholds: Sequence[float]) -> torch.Tensor:
    values = torch.tensor([float(t) for t in thresholds], dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("need at least one threshold")
    if values.numel() > 1 and not bool((values[1:] > values[:-1]).all()):
        raise ValueError("thresholds must be strictly increasing")
    return values


def sweep_histogram(
    raw: torch.Tensor, gt_binary: torch.Tensor, thresholds: Sequence[float] = DEFAULT_SWEEP_THRESHOLDS
) -> torch.Tensor:
    """int64 [2, T + 1] histogram of one image (row 0: GT background, row 1: GT foreground), on raw's device."""
    if raw.shape != gt_binary.shape:
        raise ValueError(f"raw shape {tuple(raw.shape)} differs from gt shape {tuple(gt_binary.shape)}")
    values = _float64_device(raw.detach()).to(torch.float64).flatten()  # float64 compare, as in score_image
    gt = binarize_gt(gt_binary.detach()).to(values.device).flatten()
    edges = _threshold_tensor(thresholds).to(values.device)
    bins = torch.bucketize(values, edges, right=True)  # number of thresholds <= value
    num_bins = edges.numel() + 1
    return torch.bincount(bins + num_bins * gt.long(), minlength=2 * num_bins).view(2, num_bins)


@dataclass
class SweepResult:
    points: list[tuple[float, float]]  # (threshold, dataset-pooled IoU)
    best_threshold: float
    best_iou: float

    def to_dict(self) -> dict:
        return {
            "points": [[t, iou] for t, iou in self.points],
            "best_threshold": self.best_threshold,
            "best_iou": self.best_iou,
        }


def threshold_sweep(histogram: torch.Tensor, thresholds: Sequence[float] = DEFAULT_SWEEP_THRESHOLDS) -> SweepResult:
    """Dataset-pooled IoU at every threshold from a pooled histogram [2, T + 1] (or per-image stack [N, 2, T + 1]).

    The best threshold is the first one reaching the highest IoU.
    """
    edges = _threshold_tensor(thresholds)
    pooled = histogram.detach().cpu().long()
    if pooled.dim() == 3:
        pooled = pooled.sum(dim=0)
    if tuple(pooled.shape) != (2, edges.numel() + 1):
        raise ValueError(f"histogram shape {tuple(histogram.shape)} does not fit {edges.numel()} thresholds")
    background, foreground = pooled[0], pooled[1]
    # above[k] = pixels in bins > k, i.e. predicted positive at threshold k.
    tp = foreground.flip(0).cumsum(0).flip(0)[1:]
    fp = background.flip(0).cumsum(0).flip(0)[1:]
    fn = int(foreground.sum()) - tp
    points = [
        (float(t), _ratio(int(a), int(a + b + c)))
        for t, a, b, c in zip(edges.tolist(), tp.tolist(), fp.tolist(), fn.tolist(), strict=True)
    ]
    best_threshold, best_iou = max(points, key=lambda point: point[1])
    return SweepResult(points=points, best_threshold=best_threshold, best_iou=best_iou)
