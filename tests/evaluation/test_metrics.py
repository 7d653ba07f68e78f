import math
import pickle

import numpy as np
import pytest
import torch
from eval_references import reference_boundary_counts
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from evaluation.metrics import (
    METRIC_NAMES,
    iou_distribution,
    metrics_from_counts,
    quantile,
    score_image,
    summarize,
    summarize_subsets,
    sweep_histogram,
    threshold_sweep,
    worst_k,
)


def numpy_metrics(
    raw: np.ndarray, gt: np.ndarray, threshold: float = 0.5, boundary: tuple[int, int] | None = None
) -> dict[str, float]:
    """An independent plain-numpy implementation of the definitions (no zero denominators in its callers).

    ``boundary``: (intersection, union) to use instead of the reference algorithm's (for pooled, flattened arrays)."""
    pred = raw >= threshold
    gt = gt != 0
    tp = np.sum(pred & gt)
    fp = np.sum(pred & ~gt)
    fn = np.sum(~pred & gt)
    tn = np.sum(~pred & ~gt)
    tpr, tnr = tp / (tp + fn), tn / (tn + fp)
    error = raw.astype(np.float64) - gt.astype(np.float64)
    inter, union = boundary or reference_boundary_counts(pred, gt)
    return {
        "iou": tp / (tp + fp + fn),
        "recall": tpr,
        "precision": tp / (tp + fp),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "acc": (tp + tn) / pred.size,
        "ber": 1 - (tpr + tnr) / 2,
        "mae": np.mean(np.abs(error)),
        "mse": np.mean(error**2),
        "boundary_iou": inter / union if union else 1.0,
    }


@pytest.fixture
def random_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    raw = torch.rand(37, 53, generator=generator)
    gt = (torch.rand(37, 53, generator=generator) < 0.4).to(torch.uint8) * 255  # Trans10k-like non-zero values
    return raw, gt


def test_every_metric_matches_torchmetrics(random_pair):
    raw, gt = random_pair
    target = (gt != 0).long()
    metrics = score_image(raw, gt, 0.5).metrics()
    # torchmetrics thresholds with ">", we with ">="; random floats never equal 0.5 exactly.
    assert not bool((raw == 0.5).any())
    expected = {
        "iou": BinaryJaccardIndex(threshold=0.5)(raw, target),
        "recall": BinaryRecall(threshold=0.5)(raw, target),
        "precision": BinaryPrecision(threshold=0.5)(raw, target),
        "f1": BinaryF1Score(threshold=0.5)(raw, target),
        "acc": BinaryAccuracy(threshold=0.5)(raw, target),
        "mae": MeanAbsoluteError()(raw, target.float()),
        "mse": MeanSquaredError()(raw, target.float()),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(float(value), rel=1e-5), name
    assert metrics["ber"] == pytest.approx(numpy_metrics(raw.numpy(), gt.numpy())["ber"], rel=1e-12)


def test_hand_counted_3x3():
    raw = torch.tensor([[0.9, 0.2, 0.6], [0.4, 0.5, 0.1], [0.7, 0.3, 0.8]], dtype=torch.float64)
    gt = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    # prediction (>= 0.5): [[1,0,1],[0,1,0],[1,0,1]] -> TP (0,0),(1,1),(2,2); FP (0,2),(2,0); FN (1,0); TN 3.
    score = score_image(raw, gt, 0.5, stem="a", subset="easy")
    assert (score.tp, score.fp, score.fn, score.tn) == (3, 2, 1, 3)
    assert (score.height, score.width, score.stem, score.subset) == (3, 3, "a", "easy")
    # |raw - gt|: .1 .2 .6 / .6 .5 .1 / .7 .3 .2 -> 3.3; squares: .01 .04 .36 / .36 .25 .01 / .49 .09 .04 -> 1.65
    assert score.abs_err == pytest.approx(3.3, abs=1e-12)
    assert score.sq_err == pytest.approx(1.65, abs=1e-12)
    expected = {
        "iou": 3 / 6,
        "recall": 3 / 4,
        "precision": 3 / 5,
        "f1": 6 / 9,
        "acc": 6 / 9,
        "ber": 1 - (3 / 4 + 3 / 5) / 2,  # 0.325
        "mae": 3.3 / 9,
        "mse": 1.65 / 9,
        # d = max(1, round(0.02 * 4.24)) = 1: every pixel of both masks touches background or the image border,
        # so each boundary region is the whole mask and Boundary IoU equals IoU.
        "boundary_iou": 3 / 6,
    }
    assert score.metrics() == pytest.approx(expected, abs=1e-12)
    assert set(score.metrics()) == set(METRIC_NAMES)


def test_ber_matches_numpy_on_random_images():
    generator = np.random.default_rng(1)
    for _ in range(5):
        raw = generator.random((20, 30))
        gt = generator.random((20, 30)) < generator.random()
        if gt.all() or not gt.any():
            continue
        metrics = score_image(torch.from_numpy(raw), torch.from_numpy(gt), 0.5).metrics()
        assert metrics == pytest.approx(numpy_metrics(raw, gt), rel=1e-12)


@pytest.mark.parametrize(
    ("raw_value", "gt_value", "expected"),
    [
        # empty GT, empty prediction: perfect on every ratio
        (0.0, 0, {"iou": 1.0, "recall": 1.0, "precision": 1.0, "f1": 1.0, "acc": 1.0, "ber": 0.0}),
        # empty GT, full prediction: no TP and FP > 0
        (1.0, 0, {"iou": 0.0, "recall": 1.0, "precision": 0.0, "f1": 0.0, "acc": 0.0, "ber": 0.5}),
        # full GT, empty prediction: everything missed
        (0.0, 1, {"iou": 0.0, "recall": 0.0, "precision": 1.0, "f1": 0.0, "acc": 0.0, "ber": 0.5}),
        # full GT, full prediction
        (1.0, 1, {"iou": 1.0, "recall": 1.0, "precision": 1.0, "f1": 1.0, "acc": 1.0, "ber": 0.0}),
    ],
)
def test_empty_masks_never_nan(raw_value, gt_value, expected):
    raw = torch.full((4, 5), raw_value)
    gt = torch.full((4, 5), gt_value, dtype=torch.uint8)
    metrics = score_image(raw, gt, 0.5).metrics()
    assert not any(math.isnan(v) for v in metrics.values())
    for name, value in expected.items():
        assert metrics[name] == value, name


def test_threshold_boundary_png_values_127_and_128():
    raw = torch.tensor([[127 / 255, 128 / 255]])
    gt = torch.tensor([[0, 1]], dtype=torch.uint8)
    score = score_image(raw, gt, 0.5)
    assert (score.tp, score.fp, score.fn, score.tn) == (1, 0, 0, 1)  # 127 -> background, 128 -> foreground


def test_pooled_differs_from_per_image_mean_and_each_matches_numpy():
    generator = np.random.default_rng(2)
    small_raw, small_gt = generator.random((4, 4)), generator.random((4, 4)) < 0.5
    big_raw = generator.random((30, 40)) * 0.6  # mostly below 0.5: a worse image that weighs more when pooled
    big_gt = generator.random((30, 40)) < 0.5
    scores = [
        score_image(torch.from_numpy(small_raw), torch.from_numpy(small_gt), stem="s"),
        score_image(torch.from_numpy(big_raw), torch.from_numpy(big_gt), stem="b"),
    ]
    summary = summarize(scores)
    assert summary["num_images"] == 2

    per_image = [numpy_metrics(small_raw, small_gt), numpy_metrics(big_raw, big_gt)]
    expected_mean = {name: (per_image[0][name] + per_image[1][name]) / 2 for name in METRIC_NAMES}
    all_raw = np.concatenate([small_raw.ravel(), big_raw.ravel()])
    all_gt = np.concatenate([small_gt.ravel(), big_gt.ravel()])
    boundaries = [reference_boundary_counts(r >= 0.5, g) for r, g in ((small_raw, small_gt), (big_raw, big_gt))]
    pooled_boundary = (boundaries[0][0] + boundaries[1][0], boundaries[0][1] + boundaries[1][1])
    expected_pooled = numpy_metrics(all_raw, all_gt, boundary=pooled_boundary)

    assert summary["per_image_mean"] == pytest.approx(expected_mean, rel=1e-12)
    assert summary["dataset"] == pytest.approx(expected_pooled, rel=1e-12)
    for name in ("iou", "recall", "mae", "boundary_iou"):
        assert abs(summary["dataset"][name] - summary["per_image_mean"][name]) > 1e-3, name


def test_score_image_rejects_mismatched_shapes_and_out_of_range():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        score_image(torch.rand(3, 4), torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="0, 1"):
        score_image(torch.full((2, 2), 1.5), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="0, 1"):
        score_image(torch.full((2, 2), float("nan")), torch.zeros(2, 2, dtype=torch.bool))


def test_error_sums_are_float64_exact():
    # float32 accumulation of one million 0.1s drifts visibly; float64 does not.
    raw = torch.full((1000, 1000), 0.1, dtype=torch.float32)
    score = score_image(raw, torch.zeros(1000, 1000, dtype=torch.bool))
    assert score.abs_err == pytest.approx(1e6 * float(np.float32(0.1)), rel=1e-12)


def test_scores_survive_pickle(random_pair):
    raw, gt = random_pair
    direct = score_image(raw, gt, 0.5, stem="s0", subset="easy")
    # Scores cross processes via gather_object (pickle).
    assert pickle.loads(pickle.dumps(direct)) == direct


def test_metrics_from_counts_rejects_inconsistent_counts():
    with pytest.raises(ValueError, match="num_pixels"):
        metrics_from_counts(1, 1, 1, 1, 0.0, 0.0, 5, 0, 0)
    with pytest.raises(ValueError, match="boundary"):
        metrics_from_counts(1, 1, 1, 1, 0.0, 0.0, 4, 3, 2)


def test_seed_protocol_thresholds_strictly():
    raw = torch.tensor([[0.5, 0.5 + 1e-6, 0.4]])
    gt = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    assert score_image(raw, gt, 0.5).tp == 2  # raw >= 0.5
    assert score_image(raw, gt, 0.5, strict=True).tp == 1  # the seed's raw > 0.5


def test_quantile_matches_numpy_and_iou_distribution_by_hand():
    values = sorted(np.random.default_rng(5).random(11).tolist())
    for q in (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), abs=1e-15)
    full = torch.ones(2, 2, dtype=torch.bool)
    # IoUs 0.25, 0.5, 0.75, 1.0: one below 0.4; mean of the others (0.5 + 0.75 + 1) / 3.
    raws = [torch.tensor([[0.9, 0.1], [0.1, 0.1]]), torch.tensor([[0.9, 0.9], [0.1, 0.1]])]
    raws += [torch.tensor([[0.9, 0.9], [0.9, 0.1]]), torch.full((2, 2), 0.9)]
    distribution = iou_distribution([score_image(raw, full) for raw in raws])
    assert distribution["num_below_0.4"] == 1 and distribution["share_below_0.4"] == 0.25
    assert distribution["mean_of_images_at_least_0.4"] == pytest.approx(0.75)
    assert distribution["quantiles"]["median"] == pytest.approx(0.625)
    assert distribution["quantiles"]["min"] == 0.25 and distribution["quantiles"]["max"] == 1.0


def test_threshold_sweep_matches_score_image_at_every_threshold():
    generator = torch.Generator().manual_seed(4)
    images = []
    for height, width in [(8, 9), (20, 13), (5, 31)]:
        raw = torch.rand(height, width, generator=generator)
        raw[0, :4] = torch.tensor([0.5, 127 / 255, 128 / 255, 0.3])  # values on and around thresholds
        images.append((raw, torch.rand(height, width, generator=generator) < 0.5))
    # Per-image histograms (as gathered across ranks), pooled as val_inference.py pools them.
    stack = torch.stack([sweep_histogram(raw, gt) for raw, gt in images])
    result = threshold_sweep(stack.sum(dim=0))
    assert len(result.points) == 99
    assert 0.5 in [threshold for threshold, _ in result.points]
    for threshold, iou in result.points:
        pooled = summarize([score_image(raw, gt, threshold) for raw, gt in images])["dataset"]["iou"]
        assert iou == pooled, threshold
    assert result.best_iou == max(iou for _, iou in result.points)
    # The stack itself gives the same answer.
    assert threshold_sweep(stack).points == result.points


def test_threshold_sweep_custom_thresholds_and_validation():
    raw = torch.tensor([[0.1, 0.4, 0.6, 0.9]])
    gt = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    thresholds = (0.05, 0.5, 0.95)
    result = threshold_sweep(sweep_histogram(raw, gt, thresholds), thresholds)
    # 0.05: all positive -> 3/4; 0.5: {0.6, 0.9} -> 2/3; 0.95: none -> 0
    assert result.points == [(0.05, 0.75), (0.5, 2 / 3), (0.95, 0.0)]
    assert (result.best_threshold, result.best_iou) == (0.05, 0.75)
    with pytest.raises(ValueError, match="increasing"):
        sweep_histogram(raw, gt, (0.5, 0.4))


def test_summarize_subsets_and_worst_k():
    full = torch.ones(2, 2, dtype=torch.bool)
    scores = [
        score_image(torch.full((2, 2), 0.9), full, stem="e1", subset="easy"),
        score_image(torch.tensor([[0.9, 0.1], [0.1, 0.1]]), full, stem="h1", subset="hard"),
        score_image(torch.tensor([[0.9, 0.9], [0.1, 0.1]]), full, stem="h2", subset="hard"),
    ]
    summaries = summarize_subsets(scores)
    assert list(summaries) == ["easy", "hard", "mix"]
    assert [summaries[k]["num_images"] for k in summaries] == [1, 2, 3]
    assert summaries["hard"]["per_image_mean"]["iou"] == pytest.approx((0.25 + 0.5) / 2)
    assert summaries["mix"]["dataset"]["iou"] == pytest.approx(7 / 12)
    assert list(summarize_subsets(scores[:1])) == ["easy", "mix"]
    assert [s.stem for s in worst_k(scores, 2)] == ["h1", "h2"]
    assert [s.stem for s in worst_k(scores, 1, metric="mse")] == ["h1"]
    with pytest.raises(ValueError):
        summarize([])
