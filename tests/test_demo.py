"""Smoke test of the demo chain: the real entry points, the real configs/demo.yaml, very few steps."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_config_trains_and_validates_end_to_end(tiny_assets, run, tmp_path):
    paths = [
        "--pretrained_model_name_or_path", str(tiny_assets["model"]),
        "--dataset_path", str(tiny_assets["data"]),
        "--cache_dir", str(tiny_assets["cache"]),
        "--output_dir", str(tmp_path / "demo"),
    ]  # fmt: skip
    short = ["--max_train_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "2"]
    run("trainer.py", "--config", "configs/demo.yaml", *paths, *short)
    for name in (
        "transformer/config.json",
        "checkpoint-2/checkpoint.json",
        "config.yaml",
        "run_info.json",
        "README.md",
    ):
        assert (tmp_path / "demo" / name).is_file(), name
    assert json.loads((tmp_path / "demo" / "train_summary.json").read_text())["steps"] == 2

    run("val_inference.py", "--config", "configs/demo.yaml", *paths, "--oracle", "vae_roundtrip")
    model = run("val_inference.py", "--config", "configs/demo.yaml", *paths)
    eval_dir = tmp_path / "demo" / "eval-test-64px-thr0.5-native-tta_hflip"  # configs/demo.yaml evaluates with tta
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["subsets"]["mix"]["num_images"] == 7
    assert "| mix |" in model.stdout and "VAE round-trip ceiling" in model.stdout
    assert "VAE round-trip ceiling" in (eval_dir / "metrics.md").read_text()
