"""trainer.py with `loss: latent_mse+pixel` (plain, cached latents, ZeRO-2) and the best-validation checkpoint."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from launcher import REPO_ROOT, accelerate_command, logged, run_command, run_script, tiny_overlay
from PIL import Image
from safetensors.torch import load_file

from utils.checkpointing import BEST, complete_checkpoints

pytestmark = pytest.mark.slow

PIXEL = {
    "loss": "latent_mse+pixel",
    "pixel_loss_weight": 0.5,
    "max_train_steps": 3,
    "random_flip": True,
    "learning_rate": 1e-3,
    "checkpointing_steps": 3,
}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def base_weights(tiny_assets) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_assets["model"] / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def write_config(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel")

    def write(name: str, **overrides) -> tuple[Path, Path]:
        run_dir = root / name
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_overlay(tiny_assets, run_dir, **overrides)))
        return run_dir, path

    return write


@pytest.fixture(scope="module")
def plain(write_config):
    run_dir, config = write_config("plain", **PIXEL)
    run_script("trainer.py", "--config", str(config))
    return run_dir


def checkpoint_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "checkpoint-3" / "checkpoint.json").read_text())["loss"]


def test_pixel_loss_training_has_a_finite_loss_and_changes_the_weights(plain, tiny_assets):
    assert math.isfinite(checkpoint_loss(plain))
    trained, base = weights(plain), base_weights(tiny_assets)
    assert all(torch.isfinite(t).all() for t in trained.values())
    assert not torch.equal(trained["proj_out.weight"], base["proj_out.weight"])


def test_cached_latents_give_the_same_pixel_loss_and_weights(plain, write_config):
    cached, config = write_config("cached", cache_latents=True, **PIXEL)
    run_script("trainer.py", "--config", str(config))
    assert checkpoint_loss(cached) == pytest.approx(checkpoint_loss(plain), rel=1e-4)
    expected, actual = weights(plain), weights(cached)
    for name in expected:  # the cache encodes in other batch sizes: equal up to float reordering
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_autocast_trains_the_pixel_loss(write_config, tiny_assets):
    """The VAE in bf16 (the compute precision), the transformer's fp32 master weights under autocast."""
    run_dir, config = write_config("bf16", **{**PIXEL, "mixed_precision": "bf16", "cache_latents": True})
    run_script("trainer.py", "--config", str(config))
    assert math.isfinite(checkpoint_loss(run_dir))
    assert not torch.equal(weights(run_dir)["proj_out.weight"], base_weights(tiny_assets)["proj_out.weight"])


def test_zero2_trains_the_pixel_loss_like_plain_training(plain, write_config):
    """DeepSpeed wraps the transformer only; the frozen VAE decodes inside its backward."""
    zero2, config = write_config("zero2", **PIXEL)
    launcher = ["--config_file", str(REPO_ROOT / "configs" / "accelerate" / "zero2.yaml"), "--num_processes", "1"]
    run_command([*accelerate_command(launcher, "trainer.py", "--config"), str(config)])
    assert math.isfinite(checkpoint_loss(zero2))
    assert checkpoint_loss(zero2) == pytest.approx(checkpoint_loss(plain), rel=1e-4)
    expected, actual = weights(plain), weights(zero2)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=2e-5, msg=name)


@pytest.fixture(scope="module")
def best_run(write_config):
    """Two ranks, validation on the whole split (5 images, sharded) after every step, every checkpoint kept."""
    settings = {  # measured: val/iou rises and falls, so the best is neither the first nor the last step
        "loss": "pixel",
        "max_train_steps": 7,
        "learning_rate": 1e-3,
        "checkpointing_steps": 1,
        "checkpoints_total_limit": 0,
        "validation_steps": 1,
        "num_validation_images": 0,
        "eval_batch_size": 2,
        "report_to": "tensorboard",
        "train_batch_size": 2,
    }
    run_dir, config = write_config("best", **settings)
    run_script("trainer.py", "--config", str(config), processes=2)
    return run_dir


def test_checkpoint_best_holds_the_step_with_the_best_logged_validation_iou(best_run):
    ious = logged(best_run, "val/iou")
    assert list(ious) == list(range(1, 8))
    assert set(logged(best_run, "val/num_images").values()) == {5.0}  # the whole split, no padding duplicates
    best_step = max(ious, key=lambda step: (ious[step], -step))  # the first of equal maxima: a tie is no gain
    assert 1 < best_step < 7  # the first best was replaced, and a worse last step did not replace it
    record = json.loads((best_run / BEST / "best.json").read_text())
    assert record["step"] == best_step
    assert record["val/iou"] == pytest.approx(ious[best_step], rel=1e-6)  # tensorboard stores float32
    best, same_step = weights(best_run / BEST), weights(best_run / f"checkpoint-{best_step}")
    assert all(torch.equal(best[name], same_step[name]) for name in same_step)
    assert BEST not in [p.name for p in complete_checkpoints(best_run)]
    summary = json.loads((best_run / "train_summary.json").read_text())
    assert summary["best_validation"]["step"] == best_step


def test_checkpoint_best_evaluates_and_predicts_by_its_name(best_run, tiny_assets):
    """val_inference.py on 1 process, the square protocol the trainer validates with: the logged best IoU again."""
    config = str(best_run / "config.yaml")
    common = ["--config", config, "--transformer_path", str(best_run / BEST)]
    run_script("val_inference.py", *common, "--split", "validation", "--eval_protocol", "square")
    record = json.loads((best_run / BEST / "best.json").read_text())
    # Its evaluation sits beside the run's other evaluations, named by the step the best held (a later best that
    # replaces checkpoint-best/ does not delete it, nor is confused with it).
    metrics_file = next(best_run.glob(f"eval-{BEST}-step{record['step']}-validation-*-square/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    assert metrics["subsets"]["mix"]["num_images"] == 5
    # The trainer scores the 8-bit quantised raw, as val_inference does: the same IoU up to float reordering.
    assert metrics["subsets"]["mix"]["dataset"]["iou"] == pytest.approx(record["val/iou"], abs=1e-6)
    image = sorted((tiny_assets["data"] / "test" / "easy" / "images").iterdir())[0]
    out = best_run / "predictions"
    run_command([sys.executable, str(REPO_ROOT / "predict.py"), *common, "--input", str(image), "--output", str(out)])
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == np.asarray(Image.open(image)).shape[:2]
