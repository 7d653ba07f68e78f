"""A things/stuff model (mask_classes things_stuff) through the real entry points: trained with the class version of
the pixel loss (cached and uncached), evaluated under the TransLab protocol with class maps written to classes/, and
used through predict.py, export.py and the pipeline."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from launcher import REPO_ROOT, run_command, run_script, tiny_overlay
from PIL import Image

from models.pipeline import TransparencySegmentationPipeline

pytestmark = pytest.mark.slow

THINGS_STUFF = {
    "mask_classes": "things_stuff",
    "loss": "latent_mse+pixel",
    "max_train_steps": 3,
    "random_flip": True,
    "learning_rate": 1e-3,
    "checkpointing_steps": 3,
    # As the reference run: gradient accumulation and a schedule that changes the LR at every step.
    "gradient_accumulation_steps": 2,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 1,
}


@pytest.fixture(scope="module")
def runs(tiny_assets, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(run folder, config) of an uncached and a cached things_stuff run."""
    root = tmp_path_factory.mktemp("things_stuff")
    result = {}
    for name, cached in (("plain", False), ("cached", True)):
        run_dir, config = root / name, root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(tiny_overlay(tiny_assets, run_dir, cache_latents=cached, **THINGS_STUFF)))
        run_script("trainer.py", "--config", str(config))
        result[name] = (run_dir, config)
    return result


def checkpoint_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "checkpoint-3" / "checkpoint.json").read_text())["loss"]


def test_the_class_loss_trains_and_the_cache_stores_its_two_planes(runs):
    plain, cached = checkpoint_loss(runs["plain"][0]), checkpoint_loss(runs["cached"][0])
    assert math.isfinite(plain)
    assert cached == pytest.approx(plain, rel=1e-4)  # the cache's packed (transparent, stuff) planes = the pixels'
    assert yaml.safe_load((runs["plain"][0] / "config.yaml").read_text())["mask_classes"] == "things_stuff"


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", path
        return np.array(image)


def test_evaluation_writes_class_maps_that_score_as_the_model(runs, tmp_path):
    run_dir, config = runs["plain"]
    # Batch size 1: each image computed alone, so 1 and 2 ranks run the same fp32 convolutions and agree exactly.
    flags = ("--config", str(config), "--eval_protocol", "translab", "--eval_batch_size", "1")
    run_script("val_inference.py", *flags, "--eval_output_dir", str(tmp_path / "model"))
    model = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert model["mask_classes"] == "things_stuff"
    class_files = sorted((tmp_path / "model" / "classes").rglob("*.png"))
    assert len(class_files) == model["subsets"]["mix"]["num_images"] == 7
    for path in class_files:
        classes = read_png(path)
        raw = read_png(tmp_path / "model" / "raw" / path.parent.name / path.name)
        assert classes.shape == raw.shape and set(np.unique(classes)) <= {0, 1, 2}
        assert np.array_equal(classes > 0, raw >= 128), path  # transparent exactly where raw/255 >= 0.5
    # Two ranks write their shares of classes/ and gather to the same metrics.
    run_script("val_inference.py", *flags, "--eval_output_dir", str(tmp_path / "two"), processes=2)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["subsets"] == model["subsets"]
    assert sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "classes").rglob("*.png")) == sorted(
        p.relative_to(tmp_path / "model") for p in class_files
    )
    # Scoring the written class maps as predictions gives the model's TransLab metrics: nothing else went in.
    again = tmp_path / "rescored"
    classes_dir = str(tmp_path / "model" / "classes")
    run_script("val_inference.py", *flags, "--predictions_dir", classes_dir, "--eval_output_dir", str(again))
    rescored = json.loads((again / "metrics.json").read_text())
    for subset in ("easy", "hard", "mix"):
        expected, actual = model["subsets"][subset]["translab"], rescored["subsets"][subset]["translab"]
        assert expected["classes"] == "things_stuff"
        assert actual == expected, subset
    # The VAE ceiling of the class encoding, and a things_stuff run evaluated as binary: refused, naming the key.
    run_script("val_inference.py", *flags, "--oracle", "vae_roundtrip", "--eval_output_dir", str(tmp_path / "oracle"))
    oracle = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert oracle["source"] == "vae_roundtrip" and "iou_stuff" in oracle["subsets"]["mix"]["translab"]
    binary = ("--mask_classes", "binary", "--eval_output_dir", str(tmp_path / "no"))
    refused = run_script("val_inference.py", *flags, *binary, check=False)
    assert refused.returncode != 0 and "mask_classes" in refused.stderr and "things_stuff" in refused.stderr


def test_predict_export_and_pipeline_give_the_same_class_maps(runs, tiny_assets, tmp_path):
    run_dir, config = runs["plain"]
    images = sorted((Path(tiny_assets["data"]) / "test" / "easy" / "images").iterdir())[:2]
    (tmp_path / "in").mkdir()
    for image in images:
        (tmp_path / "in" / image.name).write_bytes(image.read_bytes())
    python = [sys.executable]
    run_command([*python, str(REPO_ROOT / "predict.py"), "--config", str(config), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")])  # fmt: skip
    run_command([*python, str(REPO_ROOT / "export.py"), "--transformer_path", str(run_dir), "--output",
                 str(tmp_path / "pipe")])  # fmt: skip
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["mask_classes"] == "things_stuff"
    pipe = TransparencySegmentationPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    out = pipe([Image.open(image).convert("RGB") for image in images])
    assert out.classes is not None and len(out.classes) == 2
    for image, classes, mask in zip(images, out.classes, out.mask, strict=True):
        written = read_png(tmp_path / "out" / f"{image.stem}_classes.png")
        assert np.array_equal(written, classes)
        assert np.array_equal(classes > 0, mask)
