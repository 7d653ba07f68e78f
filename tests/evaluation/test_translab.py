import pickle

import numpy as np
import pytest
from eval_references import reference_translab
from PIL import Image

from dataset.trans10k import DatasetError
from evaluation.translab import (
    resize_classes,
    score_translab,
    summarize_translab,
    summarize_translab_subsets,
    translab_gt_classes,
)

GREYS = np.array([0, 85, 255], dtype=np.uint8)


def test_hand_computed_two_images_one_without_stuff():
    # A: gt [[0,1],[2,2]], pred [[0,1],[2,1]]; B (no stuff): gt [[0,0],[1,1]], pred [[1,0],[1,1]].
    a = score_translab(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]), "things_stuff", "a", "easy")
    b = score_translab(np.array([[0, 0], [1, 1]]), np.array([[1, 0], [1, 1]]), "things_stuff", "b", "hard")
    summary = summarize_translab([a, b])
    # background: gt 3 px, predicted 2, both 2 -> 2/3; things: gt 3, predicted 5, both 3 -> 3/5; stuff: 1/2.
    assert summary["iou_background"] == pytest.approx(2 / 3)
    assert summary["iou_things"] == pytest.approx(3 / 5)
    assert summary["iou_stuff"] == pytest.approx(1 / 2)
    assert summary["miou"] == pytest.approx(0.55)  # background excluded
    assert summary["acc"] == pytest.approx(4 / 5)  # 5 non-background GT pixels, 4 right
    assert summary["mae"] == pytest.approx(0.25)  # 1/4 in each image
    # things: A 100 * (1 - (1/1 + 2/3) / 2) = 16.67, B 100 * (1 - (2/2 + 1/2) / 2) = 25; stuff: A only, 25.
    assert summary["ber_things"] == pytest.approx((100 / 6 + 25) / 2)
    assert summary["ber_stuff"] == pytest.approx(25.0)
    assert summary["mber"] == pytest.approx(((100 / 6 + 25) / 2 + 25) / 2)
    assert summary["classes"] == "things_stuff" and summary["num_images"] == 2
    assert pickle.loads(pickle.dumps(a)) == a  # gathered across processes as objects


def test_matches_the_reference_loops_on_random_images_of_different_sizes():
    rng = np.random.default_rng(0)
    pairs = []
    for index, (height, width) in enumerate([(512, 512), (37, 53), (90, 61), (64, 64), (21, 400)]):
        gt = rng.integers(0, 3, (height, width))
        if index == 2:
            gt[gt == 2] = 1  # an image without stuff
        predicted = np.where(rng.random((height, width)) < 0.7, gt, rng.integers(0, 3, (height, width)))
        pairs.append((gt, predicted))
    summary = summarize_translab([score_translab(g, p, "things_stuff") for g, p in pairs])
    expected = reference_translab(pairs, 3)
    assert [summary[f"iou_{n}"] for n in ("background", "things", "stuff")] == pytest.approx(expected["iou"])
    for key in ("miou", "acc", "mae", "mber"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-12), key
    assert [summary["ber_things"], summary["ber_stuff"]] == pytest.approx(expected["ber"], rel=1e-12)


def test_binary_version_and_absent_classes():
    gt = np.array([[0, 1, 1], [0, 0, 1]])
    predicted = np.array([[1, 1, 0], [0, 0, 1]])
    summary = summarize_translab([score_translab(gt, predicted, "binary")])
    assert set(summary) == {
        "classes", "num_images", "iou_background", "iou_transparent", "miou", "acc", "mae", "ber_transparent", "mber"
    }  # fmt: skip
    assert summary["iou_transparent"] == pytest.approx(2 / 4) and summary["miou"] == summary["iou_transparent"]
    assert summary["acc"] == pytest.approx(2 / 3) and summary["mae"] == pytest.approx(2 / 6)
    assert summary["ber_transparent"] == pytest.approx(100 * (1 - (2 / 3 + 2 / 3) / 2))
    expected = reference_translab([(gt, predicted)], 2)
    assert summary["mber"] == pytest.approx(expected["mber"])
    no_stuff = summarize_translab([score_translab(np.array([[0, 1]]), np.array([[0, 1]]), "things_stuff")])
    assert no_stuff["ber_stuff"] is None and no_stuff["mber"] is None  # never NaN
    assert no_stuff["iou_stuff"] == 1.0  # absent and never predicted
    with pytest.raises(ValueError, match="mixed"):
        summarize_translab([score_translab(gt, predicted, "binary"), score_translab(gt, predicted, "things_stuff")])
    with pytest.raises(ValueError, match="< 2"):
        score_translab(np.array([[2]]), np.array([[0]]), "binary")


def test_subsets_and_mix():
    one = score_translab(np.array([[1]]), np.array([[1]]), "things_stuff", "1", "hard")
    two = score_translab(np.array([[2]]), np.array([[1]]), "things_stuff", "2", "easy")
    summaries = summarize_translab_subsets([one, two])
    assert list(summaries) == ["easy", "hard", "mix"]
    assert summaries["mix"]["num_images"] == 2 and summaries["hard"]["iou_things"] == 1.0


def test_ground_truth_is_the_rgb_mean_with_exact_values(tmp_path):
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (13, 17)).astype(np.uint8)
    grey = GREYS[classes]
    paths = {
        "L": Image.fromarray(grey),
        "RGB": Image.fromarray(np.stack([grey] * 3, axis=2)),
        "RGBA": Image.fromarray(np.dstack([grey, grey, grey, rng.integers(0, 256, grey.shape, dtype=np.uint8)])),
    }
    for mode, image in paths.items():
        image.save(tmp_path / f"{mode}.png")
        assert np.array_equal(translab_gt_classes(tmp_path / f"{mode}.png"), classes), mode
    # Pure red (255, 0, 0) has mean 85: things for TransLab (the largest channel, 255, would say stuff).
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(translab_gt_classes(tmp_path / "red.png"), np.ones((2, 2), dtype=np.uint8))
    # An antialiased edge (grey 128) and a near-official value are errors naming the file, with the values.
    noisy = np.stack([grey] * 3, axis=2)
    noisy[0, 0] = (128, 128, 128)
    noisy[0, 1] = (85, 85, 86)
    Image.fromarray(noisy).save(tmp_path / "noisy_mask.png")
    with pytest.raises(DatasetError, match=r"noisy_mask\.png.*2 mask pixels.*85\.3333.*128"):
        translab_gt_classes(tmp_path / "noisy_mask.png")


def test_resize_to_512_is_pil_nearest_on_the_class_image():
    classes = np.random.default_rng(2).integers(0, 3, (93, 124)).astype(np.uint8)
    expected = np.asarray(Image.fromarray(classes).resize((512, 512), Image.NEAREST))
    assert np.array_equal(resize_classes(classes), expected)
    at_side = np.random.default_rng(3).integers(0, 3, (512, 512)).astype(np.uint8)
    assert resize_classes(at_side) is at_side or np.array_equal(resize_classes(at_side), at_side)
