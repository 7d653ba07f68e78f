"""val_inference.py and predict.py through their real entry points on a tiny trained model."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from eval_references import reference_translab
from PIL import Image

from evaluation.image_writer import png_to_raw

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_assets, tmp_path_factory, run) -> Path:
    """A 2-step tiny model and the overlay that points at it."""
    root = tmp_path_factory.mktemp("trained")
    overlay = root / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "pretrained_model_name_or_path": str(tiny_assets["model"]),
                "dataset_path": str(tiny_assets["data"]),
                "cache_dir": str(tiny_assets["cache"]),
                "output_dir": str(root / "run"),
                "resolution": 64,
                "max_sequence_length": 8,  # 8 CLIP + 8 T5 text tokens, as the demo: fast steps
                "mixed_precision": "no",
                "train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_train_steps": 2,
                "checkpointing_steps": 1,  # checkpoint-1 and checkpoint-2, two models of one run
                "validation_steps": 0,
                "dataloader_num_workers": 0,
                "report_to": "none",
                "eval_batch_size": 2,
                "num_worst_panels": 2,
                "num_sample_panels": 1,
            }
        )
    )
    run("trainer.py", "--config", str(overlay))
    return overlay


def metrics(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "metrics.json").read_text())


def evaluate(run, overlay: Path, eval_dir: Path, *flags: str, **options):
    """val_inference.py with the trained overlay, writing into eval_dir."""
    return run("val_inference.py", "--config", str(overlay), "--eval_output_dir", str(eval_dir), *flags, **options)


def test_one_and_two_processes_agree_on_an_odd_number_of_images(trained, tmp_path, run):
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate(run, trained, one)
    evaluate(run, trained, two, processes=2)
    first, second = metrics(one), metrics(two)
    assert first["subsets"]["mix"]["num_images"] == 7  # 4 easy + 3 hard: one rank gets a padded duplicate
    assert first["subsets"] == second["subsets"]
    rows = list(csv.DictReader((two / "per_image.csv").open()))
    assert sorted((r["subset"], r["stem"]) for r in rows) == sorted({(r["subset"], r["stem"]) for r in rows})
    assert len(rows) == 7


def test_metrics_shape_files_and_rescoring_saved_predictions(trained, tmp_path, run, tiny_assets):
    eval_dir = tmp_path / "model"
    evaluate(run, trained, eval_dir)
    result = metrics(eval_dir)
    assert result["threshold"] == 0.5
    assert set(result["subsets"]) == {"easy", "hard", "mix"}
    for summary in result["subsets"].values():
        assert set(summary) == {"num_images", "per_image_mean", "dataset", "per_image_iou"}
        for stat in ("per_image_mean", "dataset"):
            assert set(summary[stat]) == {
                "iou",
                "recall",
                "precision",
                "f1",
                "acc",
                "ber",
                "mae",
                "mse",
                "boundary_iou",
            }
    # Raw predictions are saved at each ground truth's native size.
    for mask_path in (Path(tiny_assets["data"]) / "test" / "hard" / "masks").glob("*_mask.png"):
        stem = mask_path.name[: -len("_mask.png")]
        assert png_to_raw(eval_dir / "raw" / "hard" / f"{stem}.png").shape == Image.open(mask_path).size[::-1]
    assert len(list((eval_dir / "panels" / "worst").glob("*.png"))) == 2
    assert "0.8819" in (eval_dir / "metrics.md").read_text()

    rescored = tmp_path / "rescored"
    evaluate(run, trained, rescored, "--predictions_dir", str(eval_dir / "raw"))
    assert metrics(rescored)["subsets"] == result["subsets"]

    (eval_dir / "raw" / "easy" / "0001.png").unlink()
    missing = evaluate(run, trained, tmp_path / "missing", "--predictions_dir", str(eval_dir / "raw"), check=False)
    assert missing.returncode != 0
    assert str(eval_dir / "raw" / "easy" / "0001.png") in missing.stderr


def test_two_checkpoints_evaluated_with_defaults_land_in_their_own_folders(trained, run):
    run_dir = Path(yaml.safe_load(trained.read_text())["output_dir"])
    quick = ["--save_raw_predictions", "false", "--num_worst_panels", "0", "--num_sample_panels", "0"]
    for step in (1, 2):
        checkpoint = run_dir / f"checkpoint-{step}"
        # use_8bit_adam (CUDA only) is a training setting: it must not stop an evaluation on a CPU.
        run(
            "val_inference.py",
            "--config",
            str(trained),
            "--transformer_path",
            str(checkpoint),
            "--use_8bit_adam",
            *quick,
        )
    for step in (1, 2):
        eval_dir = run_dir / f"eval-checkpoint-{step}-test-64px-thr0.5-native"
        assert metrics(eval_dir)["subsets"]["mix"]["num_images"] == 7
        snapshot = yaml.safe_load((eval_dir / "config.yaml").read_text())
        assert snapshot["transformer_path"] == str(run_dir / f"checkpoint-{step}")  # this folder's own model


def test_vae_oracle_and_threshold_sweep_on_validation(trained, tmp_path, run):
    oracle = tmp_path / "oracle"
    evaluate(run, trained, oracle, "--oracle", "vae_roundtrip", "--split", "validation", "--threshold_sweep", "true")
    result = metrics(oracle)
    assert result["source"] == "vae_roundtrip"
    assert result["subsets"]["mix"]["num_images"] == 5
    sweep = result["threshold_sweep"]
    assert 0 < sweep["best_threshold"] < 1
    assert sweep["best_iou"] >= max(iou for _, iou in sweep["points"]) - 1e-12


def test_a_model_under_the_translab_protocol_gets_the_two_class_version(trained, tmp_path, run):
    quick = ["--save_raw_predictions", "false", "--num_worst_panels", "0", "--num_sample_panels", "0"]
    evaluate(run, trained, tmp_path / "translab", "--eval_protocol", "translab", *quick)
    result = metrics(tmp_path / "translab")
    assert result["protocol"] == "translab" and result["mask_classes"] == "binary"
    for summary in result["subsets"].values():
        assert summary["translab"]["classes"] == "binary"
        assert summary["translab"]["iou_transparent"] == pytest.approx(summary["dataset"]["iou"], rel=1e-12)


def test_predict_keeps_native_size_of_rotated_odd_sized_images(trained, tmp_path, run):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 91, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when displayed
    stored.save(inputs / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((50, 33, 3), dtype=np.uint8)).save(inputs / "odd.png")
    out = tmp_path / "out"
    # use_8bit_adam (CUDA only) is a training setting: it must not stop a prediction on a CPU.
    run("predict.py", "--config", str(trained), "--input", str(inputs), "--output", str(out), "--use_8bit_adam")
    assert Image.open(out / "rotated_mask.png").size == (37, 91)  # upright: width and height swapped
    assert Image.open(out / "odd_mask.png").size == (33, 50)
    for stem in ("rotated", "odd"):
        assert set(np.unique(np.array(Image.open(out / f"{stem}_mask.png")))) <= {0, 255}
        assert (out / f"{stem}_raw.png").is_file() and (out / f"{stem}_overlay.png").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Any method's predictions (--predictions_dir): no model is loaded, so these runs need no training.

GREY_TO_CLASS = {0: 0, 85: 1, 255: 2}


def scene_masks(data: Path, split: str = "test") -> list[tuple[str, str, np.ndarray]]:
    """(subset, stem, GT classes) of every test image, read here with PIL: the synthetic masks are mode L 0/85/255."""
    result = []
    for subset in ("easy", "hard"):
        for mask_path in sorted((data / split / subset / "masks").glob("*_mask.png")):
            grey = np.array(Image.open(mask_path))
            result.append((subset, mask_path.name[: -len("_mask.png")], np.vectorize(GREY_TO_CLASS.get)(grey)))
    return result


def predictions_overlay(tiny_config) -> Path:
    return tiny_config(eval_batch_size=2, num_worst_panels=1, num_sample_panels=1)


def score_dir(run, overlay: Path, eval_dir: Path, predictions: Path, *flags: str, **options):
    return evaluate(run, overlay, eval_dir, "--predictions_dir", str(predictions), *flags, **options)


def noisy_raw(classes: np.ndarray, seed: int) -> np.ndarray:
    """uint8 raw values: GT-like with noise, so every metric is away from 0 and 1."""
    rng = np.random.default_rng(seed)
    base = np.where(classes > 0, 190, 60) + rng.integers(-90, 90, classes.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def save_in_mode(value: np.ndarray, mode: str, path: Path, seed: int) -> None:
    """The same 8-bit raw value k stored as L k, RGB (k, k, k), RGBA (k, k, k, random alpha) or 16-bit k * 257."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(value).save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([value] * 3, axis=2)).save(path)
    elif mode == "RGBA":
        alpha = np.random.default_rng(seed).integers(0, 256, value.shape, dtype=np.uint8)
        Image.fromarray(np.dstack([value, value, value, alpha])).save(path)
    else:
        Image.fromarray(value.astype(np.uint16) * 257).save(path)  # k * 257 / 65535 = k / 255 exactly


def test_every_prediction_mode_scores_the_same_and_matches_numpy(tiny_assets, tiny_config, tmp_path, run):
    overlay, samples = predictions_overlay(tiny_config), scene_masks(Path(tiny_assets["data"]))
    modes = ("L", "RGB", "RGBA", "I;16")
    for index, (subset, stem, classes) in enumerate(samples):
        value = noisy_raw(classes, index)
        save_in_mode(value, "L", tmp_path / "grey" / subset / f"{stem}.png", index)
        save_in_mode(value, modes[index % 4], tmp_path / "mixed" / subset / f"{stem}.png", index)
    score_dir(run, overlay, tmp_path / "eval_grey", tmp_path / "grey")
    score_dir(run, overlay, tmp_path / "eval_mixed", tmp_path / "mixed")
    grey, mixed = metrics(tmp_path / "eval_grey"), metrics(tmp_path / "eval_mixed")
    assert mixed["subsets"] == grey["subsets"]  # the four conversions give identical raw values
    assert mixed["predictions"]["images_per_mode"] == {"I;16": 1, "L": 2, "RGB": 2, "RGBA": 2}
    assert mixed["predictions"]["conversion"]["RGBA"] == "mean(R, G, B) / 255, alpha ignored"
    assert mixed["predictions"]["conversion"]["I;16"] == "value / 65535"
    # Independent: pooled IoU and per-image MAE over the native-size files, by numpy.
    tp = fp = fn = 0
    maes = []
    for index, (_, _, classes) in enumerate(samples):
        raw, gt = noisy_raw(classes, index) / 255, classes > 0
        tp, fp, fn = tp + np.sum((raw >= 0.5) & gt), fp + np.sum((raw >= 0.5) & ~gt), fn + np.sum((raw < 0.5) & gt)
        maes.append(np.mean(np.abs(raw - gt)))
    assert grey["subsets"]["mix"]["dataset"]["iou"] == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
    # Raw values are float32 tensors (k / 255 rounded to float32): ~1e-8 from the float64 ones here.
    assert grey["subsets"]["mix"]["per_image_mean"]["mae"] == pytest.approx(np.mean(maes), rel=1e-6)
    # The per-image IoU distribution, from per_image.csv.
    rows = list(csv.DictReader((tmp_path / "eval_grey" / "per_image.csv").open()))
    ious = [float(r["iou"]) for r in rows]
    distribution = grey["subsets"]["mix"]["per_image_iou"]
    assert distribution["quantiles"]["median"] == pytest.approx(float(np.median(ious)), abs=1e-15)
    assert distribution["share_below_0.4"] == pytest.approx(np.mean(np.array(ious) < 0.4))
    assert {"boundary_iou", "boundary_intersection", "boundary_union"} <= set(rows[0])
    text = (tmp_path / "eval_grey" / "metrics.md").read_text()
    assert "Boundary IoU" in text and "Per-image IoU distribution" in text


def test_seed_protocol_scores_the_seeds_rgb_pred_pngs(tiny_assets, tiny_config, tmp_path, run):
    """The seed's layout (<id>_pred.png, RGB at the model's resolution) scored as its e2e_log_val.py does."""
    overlay, samples = predictions_overlay(tiny_config), scene_masks(Path(tiny_assets["data"]))
    rng = np.random.default_rng(7)
    ious = []
    for subset, stem, classes in samples:
        gt = np.array(Image.fromarray((classes > 0).astype(np.uint8)).resize((64, 64), Image.NEAREST)) > 0
        rgb = np.clip(np.where(gt, 170, 90)[..., None] + rng.integers(-100, 100, (64, 64, 3)), 0, 255)
        (tmp_path / "seed" / subset).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "seed" / subset / f"{stem}_pred.png")
        predicted = rgb.mean(axis=2) / 255 > 0.5  # the seed: mean of the channels, then > 0.5
        ious.append(np.sum(predicted & gt) / np.sum(predicted | gt))
    score_dir(run, overlay, tmp_path / "eval", tmp_path / "seed", "--eval_protocol", "seed")
    result = metrics(tmp_path / "eval")
    assert result["protocol"] == "seed" and result["predictions"]["naming"] == {"<stem>_pred.png": len(samples)}
    assert result["subsets"]["mix"]["per_image_mean"]["iou"] == pytest.approx(np.mean(ious), rel=1e-12)
    refused = score_dir(
        run, overlay, tmp_path / "no", tmp_path / "seed", "--eval_protocol", "seed", "--threshold", "0.4", check=False
    )
    assert refused.returncode != 0 and "raw > 0.5" in refused.stderr  # the launcher turns exit 2 into 1


def translab_expected(samples, class_maps: dict) -> dict:
    """TransLab's metrics per subset by the reference loops, every map brought to 512 with PIL NEAREST."""

    def at_512(classes: np.ndarray) -> np.ndarray:
        image = Image.fromarray(classes.astype(np.uint8))
        return np.array(image if image.size == (512, 512) else image.resize((512, 512), Image.NEAREST))

    pairs = {subset: [] for subset in ("easy", "hard", "mix")}
    for subset, stem, classes in samples:
        pair = (at_512(classes), at_512(class_maps[(subset, stem)]))
        pairs[subset].append(pair)
        pairs["mix"].append(pair)
    return {subset: reference_translab(items, 3) for subset, items in pairs.items()}


def test_translab_protocol_on_class_maps_against_the_reference(tiny_assets, tiny_config, tmp_path, run):
    overlay, samples = predictions_overlay(tiny_config), scene_masks(Path(tiny_assets["data"]))
    rng = np.random.default_rng(3)
    class_maps = {}
    for index, (subset, stem, classes) in enumerate(samples):
        # Odd images at native size, even ones at TransLab's 512 x 512; a fifth of the pixels wrong.
        square = Image.fromarray(classes.astype(np.uint8)).resize((512, 512), Image.NEAREST)
        base = classes if index % 2 else np.array(square)
        wrong = rng.random(base.shape) < 0.2
        class_map = np.where(wrong, rng.integers(0, 3, base.shape), base).astype(np.uint8)
        class_maps[(subset, stem)] = class_map
        (tmp_path / "maps" / subset).mkdir(parents=True, exist_ok=True)
        Image.fromarray(class_map).save(tmp_path / "maps" / subset / f"{stem}.png")
    flags = ("--eval_protocol", "translab", "--mask_classes", "things_stuff")
    score_dir(run, overlay, tmp_path / "one", tmp_path / "maps", *flags)
    score_dir(run, overlay, tmp_path / "two", tmp_path / "maps", *flags, processes=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert one["subsets"] == two["subsets"]
    expected = translab_expected(samples, class_maps)
    for subset in ("easy", "hard", "mix"):
        translab = one["subsets"][subset]["translab"]
        assert translab["classes"] == "things_stuff"
        names = ("iou_background", "iou_things", "iou_stuff")
        assert [translab[n] for n in names] == pytest.approx(expected[subset]["iou"], rel=1e-12), subset
        for key in ("miou", "acc", "mae", "mber"):
            assert translab[key] == pytest.approx(expected[subset][key], rel=1e-12), (subset, key)
    assert one["predictions"]["kind"] == "class_map"
    text = (tmp_path / "one" / "metrics.md").read_text()
    assert "TransLab protocol (3 classes" in text and "EBLNet" in text and "91.25" in text and "87.63" in text

    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "maps", bad)
    subset, stem, classes = samples[0]
    Image.fromarray(np.full(classes.shape, 85, dtype=np.uint8)).save(bad / subset / f"{stem}.png")  # a grey mask
    refused = score_dir(run, overlay, tmp_path / "refused", bad, *flags, check=False)
    assert refused.returncode != 0 and str(bad / subset / f"{stem}.png") in refused.stderr
    assert "not classes 0, 1, 2" in refused.stderr


def test_translab_protocol_on_binary_predictions_is_the_two_class_version(tiny_assets, tiny_config, tmp_path, run):
    overlay, samples = predictions_overlay(tiny_config), scene_masks(Path(tiny_assets["data"]))
    for index, (subset, stem, classes) in enumerate(samples):
        save_in_mode(noisy_raw(classes, index), "L", tmp_path / "raw" / subset / f"{stem}.png", index)
    score_dir(run, overlay, tmp_path / "eval", tmp_path / "raw", "--eval_protocol", "translab")
    result = metrics(tmp_path / "eval")
    for summary in result["subsets"].values():
        translab = summary["translab"]
        assert translab["classes"] == "binary" and "iou_things" not in translab
        # The two-class IoU is the binary IoU at 512 x 512, and Acc is its recall (both pooled).
        assert translab["iou_transparent"] == pytest.approx(summary["dataset"]["iou"], rel=1e-12)
        assert translab["acc"] == pytest.approx(summary["dataset"]["recall"], rel=1e-12)
    text = (tmp_path / "eval" / "metrics.md").read_text()
    section = text.split("## TransLab protocol, two-class version (background vs transparent)")[1].split("\n## ")[0]
    table_rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table_rows) == 2 + 3 and all(line.startswith(("| this run", "| Method", "|---")) for line in table_rows)
    assert "not comparable" in section  # the published 3-class numbers only as a labelled list below the table


def test_prediction_problems_are_named_all_at_once(tiny_assets, tiny_config, tmp_path, run):
    overlay, samples = predictions_overlay(tiny_config), scene_masks(Path(tiny_assets["data"]))
    preds = tmp_path / "preds"
    for index, (subset, stem, classes) in enumerate(samples):
        save_in_mode(noisy_raw(classes, index), "L", preds / subset / f"{stem}.png", index)
    (subset_a, stem_a, _), (subset_b, stem_b, _), (subset_c, stem_c, classes_c) = samples[0], samples[1], samples[-1]
    (preds / subset_a / f"{stem_a}.png").unlink()
    (preds / subset_b / f"{stem_b}.png").unlink()
    rotated = preds / subset_c / f"{stem_c}.png"
    Image.fromarray(noisy_raw(classes_c, 0).T.copy()).save(rotated)  # width and height swapped
    result = score_dir(run, overlay, tmp_path / "eval", preds, check=False)
    assert result.returncode != 0
    for name in (f"{stem_a}.png", f"{stem_b}.png", "rotated by 90"):
        assert name in result.stderr, name
    assert not (tmp_path / "eval").exists()  # refused before anything is written

    save_in_mode(noisy_raw(samples[0][2], 0), "L", preds / subset_a / f"{stem_a}.png", 0)
    save_in_mode(noisy_raw(samples[1][2], 1), "L", preds / subset_b / f"{stem_b}.png", 1)
    save_in_mode(noisy_raw(classes_c, 2), "L", rotated, 2)
    rotated.write_bytes(rotated.read_bytes()[:120])  # truncated: the header passes, decoding fails
    truncated = score_dir(run, overlay, tmp_path / "eval2", preds, check=False)
    assert truncated.returncode != 0 and str(rotated) in truncated.stderr and "truncated" in truncated.stderr


def test_a_missing_subset_folder_says_which_subsets_exist(tiny_assets, tiny_config, tmp_path, run):
    data = tmp_path / "data"
    shutil.copytree(Path(tiny_assets["data"]) / "test" / "easy", data / "test" / "easy")
    overlay = tiny_config(dataset_path=str(data))
    result = evaluate(run, overlay, tmp_path / "eval", "--oracle", "vae_roundtrip", check=False)
    assert result.returncode != 0
    assert "missing folder" in result.stderr and "--subsets easy" in result.stderr
