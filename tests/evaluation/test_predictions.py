from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.trans10k import Sample
from evaluation.predictions import (
    PredictionError,
    check_predictions,
    prediction_path,
    read_class_map,
    read_prediction,
)


def test_each_mode_converts_as_stated(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    wide = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    mean = (rgb[..., 0].astype(np.float64) + rgb[..., 1] + rgb[..., 2]) / 3 / 255
    expected = {
        "l": rgb[..., 0] / 255,
        "rgb": mean,
        "rgba": mean,  # alpha ignored
        "wide": wide / 65535,
    }
    for name, values in expected.items():
        raw = read_prediction(tmp_path / f"{name}.png")
        assert raw.dtype == torch.float32 and raw.shape == (5, 7)
        assert np.allclose(raw.numpy(), values, atol=1e-7, rtol=0), name


@pytest.mark.parametrize("mode", ["1", "P", "LA", "I", "F"])
def test_other_modes_are_refused_naming_the_file(tmp_path, mode):
    # PNG cannot hold 32-bit integer or float pixels: those come as TIFF (any file PIL reads is checked by mode).
    path = tmp_path / (f"pred_{mode}.png" if mode not in ("I", "F") else f"pred_{mode}.tiff")
    Image.new(mode, (4, 3)).save(path)
    with pytest.raises(PredictionError, match=rf"{path.name}.*mode {mode}"):
        read_prediction(path)


def test_truncated_png_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PredictionError, match=r"cut\.png.*truncated"):
        read_prediction(path)


def test_class_maps(tmp_path):
    classes = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    Image.fromarray(classes).save(tmp_path / "ok.png")
    assert torch.equal(read_class_map(tmp_path / "ok.png"), torch.from_numpy(classes))
    Image.fromarray(np.array([[0, 85], [255, 3]], dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(PredictionError, match=r"grey\.png: 3 pixels hold values \[3, 85, 255\]"):
        read_class_map(tmp_path / "grey.png")
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(PredictionError, match=r"rgb\.png: mode RGB; class maps"):
        read_class_map(tmp_path / "rgb.png")


def _dataset(root: Path, sizes: dict[tuple[str, str], tuple[int, int]]) -> list[Sample]:
    samples = []
    for (subset, stem), (width, height) in sizes.items():
        folder = root / "data" / subset
        folder.mkdir(parents=True, exist_ok=True)
        mask = folder / f"{stem}_mask.png"
        Image.new("L", (width, height)).save(mask)
        samples.append(Sample(folder / f"{stem}.jpg", mask, stem, "test", subset))
    return samples


def test_check_lists_every_problem_and_accepts_what_can_be_resized(tmp_path):
    sizes = {
        ("easy", "same"): (124, 93),
        ("easy", "scaled"): (124, 93),
        ("easy", "square"): (124, 93),
        ("easy", "rotated"): (124, 93),
        ("hard", "three_by_two"): (50, 50),
        ("hard", "missing_a"): (10, 10),
        ("hard", "missing_b"): (10, 10),
        ("hard", "palette"): (10, 10),
        ("hard", "seed_named"): (10, 10),
    }
    samples = _dataset(tmp_path, sizes)
    preds = tmp_path / "preds"
    for subset in ("easy", "hard"):
        (preds / subset).mkdir(parents=True)
    Image.new("L", (124, 93)).save(preds / "easy" / "same.png")
    Image.new("RGB", (62, 46)).save(preds / "easy" / "scaled.png")  # 46.5 rounds either way: a scaled copy
    Image.new("L", (64, 64)).save(preds / "easy" / "square.png")  # the model's resolution
    Image.new("L", (93, 124)).save(preds / "easy" / "rotated.png")
    Image.new("L", (3, 2)).save(preds / "hard" / "three_by_two.png")
    Image.new("P", (10, 10)).save(preds / "hard" / "palette.png")
    Image.new("L", (10, 10)).save(preds / "hard" / "seed_named_pred.png")
    with pytest.raises(PredictionError) as error:
        check_predictions(preds, samples, square_sides=(64,), class_maps=False)
    message = str(error.value)
    assert message.startswith("5 of 9 predictions")
    for listed in ("rotated.png is 93x124", "rotated by 90", "three_by_two.png is 3x2", "missing_a", "missing_b"):
        assert listed in message, listed
    assert "palette.png: mode P" in message
    for fine in ("same.png", "scaled.png", "square.png", "seed_named"):
        assert fine not in message, fine

    ok = [s for s in samples if s.stem in ("same", "scaled", "square", "seed_named")]
    info = check_predictions(preds, ok, square_sides=(64,), class_maps=False)
    assert info["conversion"] == {"L": "value / 255", "RGB": "mean(R, G, B) / 255"}
    assert info["images_per_mode"] == {"L": 3, "RGB": 1}
    assert info["naming"] == {"<stem>.png": 3, "<stem>_pred.png": 1}
    assert info["kind"] == "raw"
    with pytest.raises(PredictionError, match="mode RGB; class maps"):
        check_predictions(preds, ok, square_sides=(64,), class_maps=True)


def test_a_stem_with_both_names_is_refused(tmp_path):
    (tmp_path / "easy").mkdir()
    for name in ("a.png", "a_pred.png"):
        Image.new("L", (2, 2)).save(tmp_path / "easy" / name)
    with pytest.raises(PredictionError, match="two predictions"):
        prediction_path(tmp_path, "easy", "a")
    with pytest.raises(PredictionError, match=r"missing prediction .*b\.png \(or b_pred\.png\)"):
        prediction_path(tmp_path, "easy", "b")
