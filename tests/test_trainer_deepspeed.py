"""trainer.py under `accelerate launch --use_deepspeed` on one CPU process (DeepSpeed's CPU accelerator, gloo): the
start-up checks and bf16. Schedules, saving, resume and agreement with plain training: tests/test_trainer_setups.py.
"""

import json
import subprocess

import pytest
import torch
from launcher import REPO_ROOT, accelerate_command, launch_env, run_command
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def launch_deepspeed(
    ds_config: str, *args: str, check: bool = True, mixed_precision: str = "no", env: dict | None = None
) -> subprocess.CompletedProcess:
    launcher = [
        "--use_deepspeed", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no", "--deepspeed_config_file", ds_config,
    ]  # fmt: skip
    return run_command(accelerate_command(launcher, "trainer.py", *args), check=check, env=env)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_deepspeed_value_disagreeing_with_config_yaml_stops_at_start(tiny_config, tmp_path):
    ds_config = json.loads((REPO_ROOT / "configs/deepspeed/zero2.json").read_text())
    ds_config["train_micro_batch_size_per_gpu"] = 8
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds_config))
    result = launch_deepspeed(str(path), "--config", str(tiny_config()), check=False)
    assert result.returncode != 0
    assert "train_micro_batch_size_per_gpu = 8 but config.yaml gives 4" in result.stderr


def test_zero2_bf16_trains(tiny_config, tmp_path):
    """bf16 under DeepSpeed: the engine holds bf16 weights, so every input must follow (a real-GPU failure mode)."""
    output_dir = tmp_path / "bf16"
    config = tiny_config(output_dir=str(output_dir), max_train_steps=2, mixed_precision="bf16", learning_rate=1e-3)
    launch_deepspeed("configs/deepspeed/zero2.json", "--config", str(config), mixed_precision="bf16")
    trained = weights(output_dir)
    assert all(torch.isfinite(value.float()).all() for value in trained.values())


def test_deepspeed_dropped_by_the_environment_stops_at_start_with_the_cause(tiny_config, tmp_path):
    """ACCELERATE_USE_CPU=true makes Accelerate quietly train without DeepSpeed; the trainer must refuse."""
    output_dir = tmp_path / "dropped"
    result = launch_deepspeed(
        "configs/deepspeed/zero2.json",
        "--config",
        str(tiny_config(output_dir=str(output_dir))),
        check=False,
        env=launch_env(ACCELERATE_USE_CPU="true"),
    )
    assert result.returncode != 0
    assert "DeepSpeed was requested" in result.stderr and "ACCELERATE_USE_CPU" in result.stderr
    assert not (output_dir / "transformer").exists()
