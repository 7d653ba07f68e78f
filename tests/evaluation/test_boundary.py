import numpy as np
import pytest
import torch
from eval_references import reference_boundary_counts, reference_mask_to_boundary

from evaluation.boundary import boundary_counts, boundary_width, inner_boundary
from evaluation.metrics import score_image


def blobs(shape: tuple[int, int], seed: int, fraction: float = 0.4) -> np.ndarray:
    """Smooth random blobs (box-blurred noise, thresholded): contours of every shape, some touching the border."""
    noise = np.random.default_rng(seed).random(shape)
    kernel = np.ones(7) / 7
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, noise)
    smooth = np.apply_along_axis(lambda col: np.convolve(col, kernel, mode="same"), 0, smooth)
    return smooth > np.quantile(smooth, 1 - fraction)


def test_boundary_width_is_two_percent_of_the_diagonal_at_least_one_pixel():
    assert boundary_width(3, 3) == 1  # 0.02 * 4.24 = 0.08 -> at least 1
    assert boundary_width(64, 64) == 2  # 1.81
    assert boundary_width(1024, 1024) == 29  # 28.96
    assert boundary_width(1024, 768) == 26  # 0.02 * 1280 = 25.6


def test_hand_made_squares_shifted_by_one_pixel():
    # 7x7 image, d = 1. GT: the 5x5 block rows 1-5, cols 1-5; prediction: the same block one column to the right.
    # Each boundary is the block's 16-pixel ring; the rings share the top and bottom rows' cols 2-5: 8 pixels.
    gt = torch.zeros(7, 7, dtype=torch.bool)
    gt[1:6, 1:6] = True
    predicted = torch.zeros(7, 7, dtype=torch.bool)
    predicted[1:6, 2:7] = True
    assert int(inner_boundary(gt, 1).sum()) == 16
    assert boundary_counts(predicted, gt) == (8, 24)
    score = score_image(predicted.double(), gt)
    assert score.metrics()["iou"] == pytest.approx(20 / 30)
    assert score.metrics()["boundary_iou"] == pytest.approx(8 / 24)


def test_outside_the_image_is_background():
    full = torch.ones(5, 5, dtype=torch.bool)
    ring = inner_boundary(full, 1)
    assert int(ring.sum()) == 16 and not bool(ring[1:4, 1:4].any())
    assert int(inner_boundary(full, 2).sum()) == 24  # the centre is 3 pixels from the outside
    assert bool(inner_boundary(full, 3).all())
    assert boundary_counts(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)) == (0, 0)
    assert score_image(torch.zeros(4, 4), torch.zeros(4, 4)).metrics()["boundary_iou"] == 1.0  # empty vs empty


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (120, 90), (201, 300), (17, 400)])
def test_matches_the_reference_algorithm_on_random_masks(shape):
    for seed in range(3):
        gt, predicted = blobs(shape, seed), blobs(shape, seed + 100, fraction=0.3)
        d = boundary_width(*shape)
        expected_gt = reference_mask_to_boundary(gt).astype(bool)
        assert torch.equal(inner_boundary(torch.from_numpy(gt), d), torch.from_numpy(expected_gt))
        assert boundary_counts(torch.from_numpy(predicted), torch.from_numpy(gt)) == reference_boundary_counts(
            predicted, gt
        )


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 13, 40])
def test_every_width_matches_iterated_3x3_erosion(d):
    mask = blobs((60, 70), seed=d)
    ratio = d / np.hypot(60, 70)  # the reference derives d from the ratio: pick the ratio that gives this d
    expected = reference_mask_to_boundary(mask, dilation_ratio=ratio).astype(bool)
    assert torch.equal(inner_boundary(torch.from_numpy(mask), d), torch.from_numpy(expected))
