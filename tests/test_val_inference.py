"""val_inference.py and predict.py through their real entry points on a tiny trained model."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
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
            assert set(summary[stat]) == {"iou", "recall", "precision", "f1", "acc", "ber", "mae", "mse"}
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
