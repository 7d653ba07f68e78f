"""export.py through its real entry point: tiny runs (plain and ZeRO-3) -> pipeline folder -> reloaded and used."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from launcher import REPO_ROOT, accelerate_command, run_command, tiny_overlay
from PIL import Image
from safetensors.torch import load_file

from models.pipeline import TransparencySegmentationPipeline
from models.segmenter import load_predictor
from utils.config import parse_config

pytestmark = pytest.mark.slow


def export(*args: str, check: bool = True):
    return run_command([sys.executable, str(REPO_ROOT / "export.py"), *map(str, args)], check=check)


def train(run, tiny_assets, root: Path, *launch_args: str, **overrides) -> Path:
    """A 2-step tiny run with checkpoint-1 and checkpoint-2; returns its output_dir."""
    output_dir = root / "run"
    overlay = root / "overlay.yaml"
    settings = tiny_overlay(tiny_assets, output_dir, checkpointing_steps=1, checkpoints_total_limit=0, **overrides)
    overlay.write_text(yaml.safe_dump(settings))
    run("trainer.py", "--config", str(overlay), *launch_args)
    return output_dir


def reference_raw(run_dir: Path, weights: Path, image: np.ndarray) -> np.ndarray:
    """MaskPredictor on the run's weights, loaded the way predict.py loads a run."""
    from dataset.trans10k import model_pixels
    from dataset.transforms import resize_raw

    args, _ = parse_config(["--config", str(run_dir / "config.yaml")])
    predictor = load_predictor(args, str(weights), torch.device("cpu"), torch.float32)
    square = (args.resolution, args.resolution)  # the runs here train with processing square
    raw = predictor.predict_raw(model_pixels(Image.fromarray(image), args.resolution, square)[None])[0]
    return resize_raw(raw, image.shape[:2]).numpy()


def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def plain_run(run, tiny_assets, tmp_path_factory) -> Path:
    """A plain tiny run with one evaluation of its final model (metrics.json beside it)."""
    run_dir = train(run, tiny_assets, tmp_path_factory.mktemp("plain"))
    quick = ["--save_raw_predictions", "false", "--num_worst_panels", "0", "--num_sample_panels", "0"]
    run("val_inference.py", "--config", str(run_dir / "config.yaml"), "--transformer_path", str(run_dir), *quick)
    return run_dir


def test_export_of_a_run_loads_alone_and_lists_its_metrics(plain_run, tmp_path):
    out = tmp_path / "exported"
    export("--transformer_path", plain_run, "--output", out)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "conditioning",
        "model_index.json",
        "transformer",
        "vae",
    ]
    pipe = TransparencySegmentationPipeline.from_pretrained(out)
    image = photo()
    assert np.array_equal(pipe(image).raw[0], reference_raw(plain_run, plain_run, image))
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["pipeline_tag"] == "image-segmentation" and front["license"] == "other"
    assert front["license_name"] == "stabilityai-ai-community" and front["datasets"] == ["trans10k"]
    assert (
        front["base_model"] == yaml.safe_load((plain_run / "config.yaml").read_text())["pretrained_model_name_or_path"]
    )
    (eval_dir,) = [p for p in plain_run.glob("eval-*") if p.is_dir()]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert f"### {eval_dir.name}" in card
    for subset in ("easy", "hard", "mix"):
        for statistic, label in (("per_image_mean", "per-image mean"), ("dataset", "dataset-pooled")):
            iou = metrics["subsets"][subset][statistic]["iou"]
            row = f"| {subset} | {label} | {metrics['subsets'][subset]['num_images']} | {iou:.4f} |"
            assert any(line.startswith(row) for line in card.splitlines()), row


def test_export_of_a_checkpoint_has_its_own_weights_and_no_foreign_metrics(plain_run, tmp_path):
    out = tmp_path / "ckpt1"
    export("--transformer_path", plain_run / "checkpoint-1", "--output", out)
    pipe = TransparencySegmentationPipeline.from_pretrained(out)
    image = photo()
    raw = pipe(image).raw[0]
    assert np.array_equal(raw, reference_raw(plain_run, plain_run / "checkpoint-1", image))
    assert not np.array_equal(raw, reference_raw(plain_run, plain_run, image))  # step 1 is not the final model
    assert "No evaluation of this model" in (out / "README.md").read_text()


def test_dry_run_lists_the_upload_and_bad_outputs_are_refused(plain_run, tmp_path):
    out = tmp_path / "exported"
    result = export(
        "--transformer_path", plain_run, "--output", out, "--push_to_hub", "me/glass", "--private", "--dry_run"
    )
    assert f"would upload {out} to the private Hub repo me/glass:" in result.stdout
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert listed == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert "conditioning/empty_prompt.safetensors" in listed and "README.md" in listed
    export("--transformer_path", plain_run, "--output", out)  # an earlier export is replaced
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    refused = export("--transformer_path", plain_run, "--output", taken, check=False)
    assert refused.returncode == 2 and "is not an exported pipeline folder" in refused.stderr
    assert (taken / "notes.txt").read_text() == "mine"
    lone = tmp_path / "weights"
    (lone / "transformer").mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (lone / "transformer" / name).write_bytes((plain_run / "transformer" / name).read_bytes())
    missing = export("--transformer_path", lone, "--output", tmp_path / "x", check=False)
    assert missing.returncode == 2 and "no config.yaml of a training run" in missing.stderr


def test_export_of_a_zero3_checkpoint(tiny_assets, tmp_path):
    """ZeRO-3 with every weight partitioned (persistence threshold 0): the checkpoint's gathered weights export."""
    ds_config = json.loads((REPO_ROOT / "ds_config.json").read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    ds_path = tmp_path / "ds_config.json"
    ds_path.write_text(json.dumps(ds_config))
    run_dir = tmp_path / "run"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(tiny_overlay(tiny_assets, run_dir, checkpointing_steps=1)))
    launcher = ["--config_file", str(REPO_ROOT / "accelerate_config.yaml"), "--num_processes", "1"]
    command = accelerate_command([*launcher, "--deepspeed_config_file", str(ds_path)], "trainer.py", "--config")
    run_command([*command, str(overlay)])
    out = tmp_path / "exported"
    export("--transformer_path", run_dir / "checkpoint-1", "--output", out)
    image = photo()
    raw = TransparencySegmentationPipeline.from_pretrained(out)(image).raw[0]
    assert np.array_equal(raw, reference_raw(run_dir, run_dir / "checkpoint-1", image))


def test_export_of_a_lora_run_merges_the_adapter(run, tiny_assets, tmp_path):
    """A LoRA run holds only the adapter: the export carries the merged transformer and needs no peft to load."""
    lora = {"train_mode": "lora", "lora_rank": 4, "lora_alpha": 8, "learning_rate": 3e-3}
    run_dir = train(run, tiny_assets, tmp_path, **lora)
    assert not (run_dir / "transformer").exists()  # adapter only
    out = tmp_path / "exported"
    export("--transformer_path", run_dir, "--output", out)
    assert not any("lora" in p.name for p in out.rglob("*"))
    image = photo()
    raw = TransparencySegmentationPipeline.from_pretrained(out)(image).raw[0]
    assert np.array_equal(raw, reference_raw(run_dir, run_dir, image))
    base = TransparencySegmentationPipeline.from_pretrained(out).transformer.state_dict()
    untrained = load_file(str(tiny_assets["model"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert base.keys() == untrained.keys()
    assert any(not torch.equal(base[key], untrained[key]) for key in base)  # the adapter was merged in
