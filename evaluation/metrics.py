"""Binary segmentation metrics for transparent-object masks: pixel counts per image, the formulas, and summaries.

Definitions (the README prints the same text):

- GT binary = any non-zero mask value. ``raw`` = model output in [0, 1] (or PNG value / 255);
  binary prediction = ``raw >= threshold`` (default 0.5).
- Per image, from the counts TP, FP, FN, TN: iou = TP/(TP+FP+FN); recall = TP/(TP+FN); precision = TP/(TP+FP);
  f1 = 2TP/(2TP+FP+FN); acc = (TP+TN)/all; ber = 1 - (TPR+TNR)/2 with TPR = recall, TNR = TN/(TN+FP);
  mae = mean |raw - gt|; mse = mean (raw - gt)^2. A ratio whose denominator is 0 is 1.0 (its numerator is then 0
  too: an empty mask predicted empty is perfect, never NaN).
- ``per_image_mean``: mean over images of the per-image metrics. ``dataset``: the same formulas applied to counts
  and error sums pooled over all pixels of all images.
- Scoring happens at each ground truth's native size: ``dataset.transforms.resize_raw`` brings a prediction there
  before thresholding.

Gathering across processes: an ``ImageScore`` is a small picklable dataclass, so the simplest exact route is
``accelerator.gather_for_metrics(list_of_image_scores)`` (accelerate falls back to ``gather_object`` for non-tensors
and still drops the duplicated samples of the last batch). For same-size batches, ``score_batch_tensor`` returns a
float64 tensor [B, 6] that gathers as a tensor; ``ImageScore.from_row`` turns a gathered row back into a score.
The rows are float64, not int64, because the error sums are fractional; pixel counts stay exact up to 2**53.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

METRIC_NAMES = ("iou", "recall", "precision", "f1", "acc", "ber", "mae", "mse")
# Metrics where a larger value is worse (used to pick the worst images).
LOWER_IS_BETTER = frozenset({"ber", "mae", "mse"})
# Column order of score_batch_tensor rows and of ImageScore.from_row.
ROW_FIELDS = ("tp", "fp", "fn", "tn", "abs_err", "sq_err")
DEFAULT_THRESHOLD = 0.5
# Sweep thresholds 0.01, 0.02, ..., 0.99 (k / 100 gives the double nearest each decimal, unlike an arange).
DEFAULT_SWEEP_THRESHOLDS = tuple(k / 100 for k in range(1, 100))


def _ratio(numerator: int, denominator: int) -> float:
    # Counts are non-negative and numerator <= denominator, so a zero denominator means 0/0: a perfect score.
    return 1.0 if denominator == 0 else numerator / denominator


def metrics_from_counts(
    tp: int, fp: int, fn: int, tn: int, abs_err: float, sq_err: float, num_pixels: int
) -> dict[str, float]:
    """Every metric in METRIC_NAMES from confusion counts and error sums over ``num_pixels`` pixels."""
    if min(tp, fp, fn, tn) < 0:
        raise ValueError(f"counts must be non-negative, got tp={tp} fp={fp} fn={fn} tn={tn}")
    if tp + fp + fn + tn != num_pixels:
        raise ValueError(f"tp+fp+fn+tn = {tp + fp + fn + tn} but num_pixels = {num_pixels}")
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
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
    }


@dataclass
class ImageScore:
    """Counts and error sums of one image at its GT's native size; one row of per_image.csv."""

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

    @property
    def num_pixels(self) -> int:
        return self.height * self.width

    def metrics(self) -> dict[str, float]:
        return metrics_from_counts(self.tp, self.fp, self.fn, self.tn, self.abs_err, self.sq_err, self.num_pixels)

    @classmethod
    def from_row(
        cls, row: torch.Tensor | Sequence[float], stem: str, subset: str, height: int, width: int
    ) -> ImageScore:
        """Rebuild a score from one ``score_batch_tensor`` row (tp, fp, fn, tn, abs_err, sq_err)."""
        values = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        if len(values) != len(ROW_FIELDS):
            raise ValueError(f"a score row has {len(ROW_FIELDS)} values {ROW_FIELDS}, got {len(values)}")
        tp, fp, fn, tn = (round(v) for v in values[:4])
        if tp + fp + fn + tn != height * width:
            raise ValueError(f"row counts sum to {tp + fp + fn + tn}, not {height}x{width} = {height * width} pixels")
        return cls(stem, subset, height, width, tp, fp, fn, tn, float(values[4]), float(values[5]))


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


def _check_raw_range(raw: torch.Tensor) -> None:
    # One host sync for both bounds; NaN fails both comparisons and is reported too.
    low, high = torch.stack([raw.amin(), raw.amax()]).tolist()
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(f"raw predictions must lie in [0, 1], got min {low} max {high}")


def _count_rows(raw: torch.Tensor, gt_binary: torch.Tensor, threshold: float) -> torch.Tensor:
    """float64 [B, 6] rows (tp, fp, fn, tn, abs_err, sq_err) for raw [B, H, W] and gt [B, H, W]."""
    if raw.shape != gt_binary.shape:
        raise ValueError(f"raw shape {tuple(raw.shape)} differs from gt shape {tuple(gt_binary.shape)}")
    if not raw.is_floating_point():
        raise TypeError(f"raw must be a float tensor in [0, 1], got dtype {raw.dtype}")
    raw = _float64_device(raw.detach()).to(torch.float64)  # float64 so error sums do not drift
    gt = binarize_gt(gt_binary.detach()).to(raw.device)
    _check_raw_range(raw)
    predicted = raw >= threshold
    dims = tuple(range(1, raw.dim()))
    tp = (predicted & gt).sum(dim=dims)
    fp = (predicted & ~gt).sum(dim=dims)
    fn = (~predicted & gt).sum(dim=dims)
    tn = (~predicted & ~gt).sum(dim=dims)
    error = raw - gt.to(torch.float64)
    abs_err = error.abs().sum(dim=dims)
    sq_err = error.square().sum(dim=dims)
    counts = torch.stack([tp, fp, fn, tn], dim=1).to(torch.float64)  # exact up to 2**53 pixels
    return torch.cat([counts, abs_err[:, None], sq_err[:, None]], dim=1)


def score_batch_tensor(
    raw: torch.Tensor, gt_binary: torch.Tensor, threshold: float = DEFAULT_THRESHOLD
) -> torch.Tensor:
    """Score a same-size batch: raw float [B, H, W] in [0, 1], gt [B, H, W] -> float64 [B, 6] on raw's device.

    Columns follow ROW_FIELDS. Meant for ``gather_for_metrics`` as a tensor; rebuild with ``ImageScore.from_row``.
    """
    if raw.dim() != 3:
        raise ValueError(f"raw must be [B, H, W], got shape {tuple(raw.shape)}")
    return _count_rows(raw, gt_binary, threshold)


def score_image(
    raw: torch.Tensor, gt_binary: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, stem: str = "", subset: str = ""
) -> ImageScore:
    """Score one image: raw float [H, W] in [0, 1] and gt [H, W] (bool, or any dtype where non-zero = foreground).

    Both must already be at the GT's native size (see ``dataset.transforms.resize_raw``); [1, H, W] is accepted too.
    Works on any device; the counts come back as python ints after a single host sync.
    """
    if raw.shape != gt_binary.shape:
        raise ValueError(f"raw shape {tuple(raw.shape)} differs from gt shape {tuple(gt_binary.shape)}")
    raw_2d, gt_2d = _as_image_2d(raw, "raw"), _as_image_2d(gt_binary, "gt_binary")
    row = _count_rows(raw_2d[None], gt_2d[None], threshold)[0]
    height, width = raw_2d.shape
    return ImageScore.from_row(row.cpu(), stem=stem, subset=subset, height=int(height), width=int(width))


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
    )


def _per_image_mean(scores: Sequence[ImageScore]) -> dict[str, float]:
    per_image = [s.metrics() for s in scores]
    return {name: math.fsum(m[name] for m in per_image) / len(per_image) for name in METRIC_NAMES}


def summarize(scores: Sequence[ImageScore]) -> dict:
    """{"num_images": N, "per_image_mean": {metric: value}, "dataset": {metric: value}} over ``scores``."""
    if not scores:
        raise ValueError("cannot summarize zero images")
    return {"num_images": len(scores), "per_image_mean": _per_image_mean(scores), "dataset": _pooled_metrics(scores)}


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


class ThresholdSweep:
    """Accumulates sweep histograms image by image; ``result()`` gives IoU at every threshold.

    ``update`` returns the image's histogram as well, so a multi-process run can gather per-image histograms with
    gather_for_metrics (which drops the last batch's duplicated samples) and feed the gathered stack to
    ``add_histogram`` on one process.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_SWEEP_THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in _threshold_tensor(thresholds).tolist())
        self.histogram = torch.zeros(2, len(self.thresholds) + 1, dtype=torch.int64)

    def update(self, raw: torch.Tensor, gt_binary: torch.Tensor) -> torch.Tensor:
        image_histogram = sweep_histogram(raw, gt_binary, self.thresholds)
        self.add_histogram(image_histogram)
        return image_histogram

    def add_histogram(self, histogram: torch.Tensor) -> None:
        """Add one [2, T + 1] histogram or a stack [N, 2, T + 1]."""
        histogram = histogram.detach().cpu().long()
        if histogram.dim() == 3:
            histogram = histogram.sum(dim=0)
        if histogram.shape != self.histogram.shape:
            raise ValueError(f"histogram shape {tuple(histogram.shape)}, expected {tuple(self.histogram.shape)}")
        self.histogram += histogram

    def result(self) -> SweepResult:
        return threshold_sweep(self.histogram, self.thresholds)
