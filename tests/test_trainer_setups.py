"""The shipped training setups under the conditions of the README's reference run, in their CPU form.

Each setup runs trainer.py through `accelerate launch` with gradient accumulation 2, warm-up + cosine, augmentation,
a dataloader worker and validation: plain (1 process), DDP (2 gloo processes), ZeRO-2 with the optimizer offloaded
(configs/accelerate/zero2.yaml + zero2_offload.json) and ZeRO-3 with the optimizer offloaded (accelerate_config.yaml's
ds_config.json) with `stage3_param_persistence_threshold: 0`, so every tiny weight is partitioned as every large
SD3.5 weight is under the shipped threshold. DeepSpeed runs on one CPU process here (several ranks need GPUs).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import SD3Transformer2DModel
from diffusers.optimization import get_scheduler
from launcher import REPO_ROOT, accelerate_command, launch_env, logged, run_command, tiny_overlay
from PIL import Image
from safetensors.torch import load_file

from utils.checkpointing import complete_checkpoints

pytestmark = pytest.mark.slow

ACCELERATE = REPO_ROOT / "configs" / "accelerate"
SETTINGS = {
    "max_train_steps": 8,
    "gradient_accumulation_steps": 2,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 2,
    "learning_rate": 1e-3,
    "checkpointing_steps": 4,
    "checkpoints_total_limit": 2,
    "random_flip": True,
    "color_jitter": 0.2,
    "random_crop_scale": 0.7,
    "dataloader_num_workers": 1,
    "validation_steps": 4,
    "num_validation_images": 2,
    "report_to": "tensorboard",
}
SETUPS = ("plain", "ddp", "zero2_offload", "zero3_offload")


def launcher(setup: str, workdir: Path) -> list[str]:
    if setup == "plain":
        return ["--config_file", str(ACCELERATE / "cpu_1proc.yaml")]
    if setup == "ddp":
        return ["--config_file", str(ACCELERATE / "cpu_2proc.yaml")]
    if setup == "zero2_offload":
        return ["--config_file", str(ACCELERATE / "zero2.yaml"), "--num_processes", "1"]
    ds_config = json.loads((REPO_ROOT / "ds_config.json").read_text())
    assert ds_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"  # as shipped
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = workdir / "ds_config_partition_all.json"
    path.write_text(json.dumps(ds_config))
    return [
        "--config_file", str(REPO_ROOT / "accelerate_config.yaml"), "--num_processes", "1",
        "--deepspeed_config_file", str(path),
    ]  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def reference_lrs() -> dict[int, float]:
    """The LR each optimizer step uses, from diffusers' get_scheduler for the same config (step k uses the LR the
    scheduler holds after k - 1 steps)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=SETTINGS["learning_rate"])
    scheduler = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=SETTINGS["lr_warmup_steps"],
        num_training_steps=SETTINGS["max_train_steps"],
    )
    lrs = {}
    for step in range(1, SETTINGS["max_train_steps"] + 1):
        lrs[step] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    return lrs


def assert_same(actual: dict, expected: dict, atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name].float(), expected[name].float(), rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("setups")


@pytest.fixture(scope="module")
def write_config(tiny_assets, workdir):
    def write(output_dir: Path, **overrides) -> Path:
        config = tiny_overlay(tiny_assets, output_dir, **{**SETTINGS, **overrides})
        path = output_dir.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="module")
def trained(workdir, write_config):
    """setup -> (straight run to step 8, run resumed from a copy of the straight run's checkpoint-4), run once."""
    done = {}

    def get(setup: str) -> tuple[Path, Path]:
        if setup not in done:
            straight, resumed = workdir / f"{setup}-straight", workdir / f"{setup}-resumed"
            command = accelerate_command(launcher(setup, workdir), "trainer.py", "--config")
            run_command([*command, str(write_config(straight))])
            # Stopping at step 4 and resuming: the checkpoint a run stopped at step 4 leaves behind.
            shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
            result = run_command([*command, str(write_config(resumed)), "--resume_from_checkpoint", "latest"])
            assert "resumed from" in result.stderr
            done[setup] = straight, resumed
        return done[setup]

    return get


@pytest.mark.parametrize("setup", SETUPS)
def test_lr_at_every_optimizer_step_follows_the_configured_schedule(trained, setup):
    straight, resumed = trained(setup)
    expected = reference_lrs()
    assert logged(straight, "train/lr") == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # The resumed run continues the schedule (steps 5..8), it does not restart the warm-up.
    assert logged(resumed, "train/lr") == pytest.approx({k: v for k, v in expected.items() if k > 4}, rel=1e-6)


@pytest.mark.parametrize("setup", SETUPS)
def test_saved_transformers_are_complete_and_load(trained, setup):
    straight, _ = trained(setup)
    assert [p.name for p in complete_checkpoints(straight)] == ["checkpoint-4", "checkpoint-8"]
    final = weights(straight / "transformer")
    assert final and all(t.numel() > 0 for t in final.values())
    assert_same(weights(straight / "checkpoint-8" / "transformer"), final)
    assert not torch.equal(
        weights(straight / "checkpoint-4" / "transformer")["proj_out.weight"], final["proj_out.weight"]
    )
    model = SD3Transformer2DModel.from_pretrained(straight / "transformer")
    assert_same(model.state_dict(), final)
    summary = json.loads((straight / "train_summary.json").read_text())
    assert summary["steps"] == 8 and "val/iou" in summary["final_validation"]


@pytest.mark.parametrize("setup", ["zero2_offload", "zero3_offload"])
def test_deepspeed_saved_transformer_equals_the_engines_fp32_weights(trained, setup):
    """Independent check: DeepSpeed's own zero_to_fp32 rebuilds the weights from the engine's (sharded) state."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    straight, _ = trained(setup)
    engine = get_fp32_state_dict_from_zero_checkpoint(str(straight / "checkpoint-8"), tag="pytorch_model")
    assert_same(weights(straight / "checkpoint-8" / "transformer"), dict(engine))


@pytest.mark.parametrize("setup", SETUPS)
def test_resume_from_step_4_gives_the_straight_runs_weights(trained, setup):
    straight, resumed = trained(setup)
    assert_same(weights(resumed / "transformer"), weights(straight / "transformer"))
    after_resume = {step: loss for step, loss in logged(straight, "train/loss").items() if step > 4}
    assert logged(resumed, "train/loss") == after_resume


@pytest.mark.parametrize("setup", ["zero2_offload", "zero3_offload"])
def test_deepspeed_trains_the_same_model_as_plain_training(trained, setup):
    assert_same(weights(trained(setup)[0] / "transformer"), weights(trained("plain")[0] / "transformer"), atol=2e-5)


def test_zero3_run_predicts_from_its_folder(trained, tiny_assets, workdir):
    straight, _ = trained("zero3_offload")
    images = sorted((tiny_assets["data"] / "test" / "hard" / "images").iterdir())[:1]
    out = workdir / "zero3-predictions"
    command = [sys.executable, str(REPO_ROOT / "predict.py"), "--config", str(straight / "config.yaml")]
    run_command([*command, "--transformer_path", str(straight), "--input", str(images[0]), "--output", str(out)])
    mask = np.asarray(Image.open(out / f"{images[0].stem}_mask.png"))
    assert mask.shape == np.asarray(Image.open(images[0])).shape[:2]


def test_a_kill_during_a_save_then_resume_latest_finishes_like_a_straight_run(trained, workdir, write_config):
    """SIGKILL the whole launch while a checkpoint is being written or pruned (limit 1: the riskiest setting)."""
    output_dir = workdir / "killed"
    config = write_config(output_dir, checkpointing_steps=1, checkpoints_total_limit=1)
    command = [*accelerate_command(launcher("plain", workdir), "trainer.py", "--config"), str(config)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=launch_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    caught = None
    deadline = time.monotonic() + 600
    while caught is None and process.poll() is None and time.monotonic() < deadline:
        if output_dir.is_dir():
            in_flight = [p.name for p in output_dir.iterdir() if p.name.startswith(".checkpoint-")]
            caught = next(
                (name for name in in_flight if not name.startswith((".checkpoint-1.", ".checkpoint-2."))), None
            )
        if caught is None:
            time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert caught is not None, "the run ended before a save at step >= 3 was caught in flight"
    assert len(complete_checkpoints(output_dir)) >= 1, caught  # limit 1: the one from before that save survived
    result = run_command([*command, "--resume_from_checkpoint", "latest"])
    assert "resumed from" in result.stderr
    assert [p.name for p in complete_checkpoints(output_dir)] == ["checkpoint-8"]
    assert not list(output_dir.glob(".checkpoint-*"))
    assert_same(weights(output_dir / "transformer"), weights(trained("plain")[0] / "transformer"))


def first_step_losses(tiny_assets, num_batches: int) -> list[float]:
    """The base model's loss on each of the first `num_batches` batches of epoch 0, computed here in-process."""
    from dataset.trans10k import TrainSampler, Trans10kTrain, validate_split
    from models.conditioning import load_empty_prompt_embeds
    from models.loading import load_base_transformer, load_frozen_vae
    from models.losses import latent_mse
    from models.segmenter import MaskPredictor, encode_latents

    model = str(tiny_assets["model"])
    samples = validate_split(tiny_assets["data"], "train")
    dataset = Trans10kTrain(samples, 64, True, SETTINGS["color_jitter"], SETTINGS["random_crop_scale"], seed=42)
    keys = list(TrainSampler(len(dataset), seed=42))
    embeds, pooled = load_empty_prompt_embeds(model, None, None, tiny_assets["cache"], torch.device("cpu"), 8)
    vae = load_frozen_vae(model, None, None, torch.float32)
    predictor = MaskPredictor(vae, load_base_transformer(model, None, None), embeds, pooled, 1000.0)
    losses = []
    with torch.no_grad():
        for b in range(num_batches):
            items = [dataset[key] for key in keys[4 * b : 4 * b + 4]]
            images = encode_latents(vae, torch.stack([item["pixel_values"] for item in items]))
            masks = encode_latents(vae, torch.stack([item["mask_values"] for item in items]))
            losses.append(latent_mse(predictor.predict_latents(images), masks).item())
    return losses


@pytest.mark.parametrize("setup, ranks", [("plain", 1), ("ddp", 2)])
def test_logged_loss_is_the_mean_over_the_accumulation_window_and_ranks(trained, tiny_assets, setup, ranks):
    # Step 1 of plain training sees batches 0 and 1; with 2 ranks, rank r sees batches r and r + 2.
    expected = float(np.mean(first_step_losses(tiny_assets, SETTINGS["gradient_accumulation_steps"] * ranks)))
    assert logged(trained(setup)[0], "train/loss")[1] == pytest.approx(expected, rel=1e-5)
