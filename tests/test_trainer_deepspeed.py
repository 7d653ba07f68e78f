"""trainer.py under `accelerate launch --use_deepspeed` on one CPU process (DeepSpeed's CPU accelerator, gloo).

This covers the code path Accelerate takes under DeepSpeed: the config consistency check, the DeepSpeed engine,
checkpoint save/load through the engine, the ZeRO-3 weight gathering for save_pretrained, and exact resume.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from utils.config import REPO_ROOT

pytestmark = pytest.mark.slow


def launch_deepspeed(
    ds_config: str, *args: str, check: bool = True, mixed_precision: str = "no"
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--num_processes", "1",
        "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "--main_process_port", str(29600 + os.getpid() % 300),
        "--deepspeed_config_file", ds_config, str(REPO_ROOT / "trainer.py"), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "transformer" / "diffusion_pytorch_model.safetensors"))


def assert_same_weights(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol, msg=name)


def test_zero2_resume_is_exact(tiny_config, tmp_path):
    settings = {"max_train_steps": 4, "checkpointing_steps": 2, "learning_rate": 1e-3}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch_deepspeed(
        "configs/deepspeed/zero2.json", "--config", str(tiny_config(output_dir=str(straight), **settings))
    )
    assert (straight / "checkpoint-4" / "pytorch_model").is_dir()  # the engine's own (sharded) checkpoint
    config = str(tiny_config(output_dir=str(resumed), **settings))
    launch_deepspeed("configs/deepspeed/zero2.json", "--config", config, "--max_train_steps", "2")
    launch_deepspeed("configs/deepspeed/zero2.json", "--config", config, "--resume_from_checkpoint", "latest")
    assert_same_weights(weights(resumed), weights(straight), atol=1e-6)


def test_zero3_with_offload_trains_like_plain_training(tiny_config, run, tmp_path):
    settings = {"max_train_steps": 2, "learning_rate": 1e-3, "validation_steps": 2, "num_validation_images": 2}
    plain, zero3 = tmp_path / "plain", tmp_path / "zero3"
    run("trainer.py", "--config", str(tiny_config(output_dir=str(plain), **settings)))
    launch_deepspeed("ds_config.json", "--config", str(tiny_config(output_dir=str(zero3), **settings)))
    # save_pretrained after gathering the ZeRO-3 shards: complete weights, equal to plain training's.
    assert_same_weights(weights(zero3), weights(plain), atol=1e-5)
    summary = json.loads((zero3 / "train_summary.json").read_text())
    assert "val/iou" in summary["final_validation"]


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
