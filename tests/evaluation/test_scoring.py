import numpy as np
import pytest
import torch
from PIL import Image

from dataset.trans10k import Sample, Trans10kEval
from dataset.transforms import STUFF_GREY, THINGS_GREY
from evaluation.scoring import gt_binary_at, score_batch, scored_size, scoring_pair

GREY_LEVELS = np.array([0, THINGS_GREY, STUFF_GREY], dtype=np.uint8)


def random_classes(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Per-pixel random classes 0 / 1 / 2: every source pixel matters, so any shifted sample shows."""
    return np.random.default_rng(seed).integers(0, 3, shape, dtype=np.uint8)


def pil_nearest_binary(classes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """What the dataset does to a Trans10k mask: the grey-level PNG resized with PIL NEAREST, then non-zero."""
    grey = Image.fromarray(GREY_LEVELS[classes])
    return torch.from_numpy(np.array(grey.resize((size[1], size[0]), Image.NEAREST)) > 0)


# (H, W) -> (H, W). 64 -> 23 and 1024 -> 17 hit exact ties (a source coordinate that is a whole number), where
# torch's "nearest-exact" rounds the other way from PIL.
@pytest.mark.parametrize(
    "source, target",
    [
        ((37, 53), (64, 64)),
        ((53, 37), (64, 64)),
        ((301, 199), (64, 64)),
        ((199, 301), (48, 80)),
        ((64, 64), (23, 23)),
        ((768, 1024), (23, 17)),
    ],
)
def test_square_ground_truth_is_pil_nearest_element_exact(source, target):
    classes = random_classes(source)
    resized = gt_binary_at(torch.from_numpy(classes), target)
    assert resized.dtype == torch.bool and tuple(resized.shape) == target
    assert torch.equal(resized, pil_nearest_binary(classes, target))


@pytest.mark.parametrize("source", [(37, 53), (53, 37), (301, 199), (127, 255)])
def test_square_ground_truth_samples_pixel_centres(source):
    # Output pixel i takes source pixel floor((i + 0.5) * n / 64), computed in integers. Odd sizes never tie.
    classes = random_classes(source, seed=1)
    rows, cols = (((2 * np.arange(64) + 1) * n) // (2 * 64) for n in source)
    expected = torch.from_numpy(classes[np.ix_(rows, cols)] > 0)
    assert torch.equal(gt_binary_at(torch.from_numpy(classes), (64, 64)), expected)


def test_square_protocol_scores_against_the_mask_the_dataset_gives_the_model(tmp_path):
    height, width = 53, 37
    Image.fromarray(GREY_LEVELS[random_classes((height, width), seed=2)]).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    item = Trans10kEval([Sample(tmp_path / "a.png", tmp_path / "a_mask.png", "a", "test", "easy")], resolution=64)[0]
    _, gt = scoring_pair(torch.zeros(64, 64), item["gt_classes"], "square", 64)
    assert torch.equal(gt, item["mask_values"][0] > 0)


def test_each_protocol_scores_at_its_size_and_the_seed_thresholds_strictly():
    gt_classes = torch.from_numpy(random_classes((37, 53), seed=3))
    raw = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    assert scored_size("native", (37, 53), 64) == (37, 53)
    assert scored_size("square", (37, 53), 64) == scored_size("seed", (37, 53), 64) == (64, 64)
    assert scored_size("translab", (37, 53), 64) == (512, 512)
    with pytest.raises(ValueError, match="unknown eval_protocol"):
        scored_size("paper", (37, 53), 64)
    translab_raw, translab_gt = scoring_pair(raw, gt_classes, "translab", 64)
    assert translab_raw.shape == translab_gt.shape == (512, 512)
    assert torch.equal(translab_gt, pil_nearest_binary(gt_classes.numpy(), (512, 512)))
    # A raw of exactly 128/255 and one of exactly 0.5 (possible only unquantized, from a 16-bit file: never exact).
    on_threshold = torch.full((64, 64), 0.5)
    batch = {"gt_classes": [torch.ones(64, 64, dtype=torch.uint8)], "stem": ["a"], "subset": ["easy"]}
    seed_scores, _, _ = score_batch([on_threshold], batch, 0.5, "seed", 64, quantize_raw=False)
    square_scores, _, _ = score_batch([on_threshold], batch, 0.5, "square", 64, quantize_raw=False)
    assert seed_scores[0].tp == 0 and square_scores[0].tp == 64 * 64


def test_predictions_from_files_keep_their_precision():
    raw = torch.full((4, 4), 0.31)  # not a multiple of 1/255: 79.05 / 255
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    quantized, _ = scoring_pair(raw, gt, "native", 64)
    exact, _ = scoring_pair(raw, gt, "native", 64, quantize_raw=False)
    assert torch.equal(exact, raw) and torch.allclose(quantized, torch.full((4, 4), 79 / 255))
