"""Time-limited runs (clusters): SIGTERM / SIGUSR1 or max_train_time_minutes -> checkpoint, exit 0, exact resume."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from launcher import REPO_ROOT, launch_env, run_command, tiny_overlay
from safetensors.torch import load_file

from utils.checkpointing import complete_checkpoints

pytestmark = pytest.mark.slow

SETTINGS = {"max_train_steps": 40, "checkpointing_steps": 10, "lr_scheduler": "cosine", "lr_warmup_steps": 3}


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "transformer" / "diffusion_pytorch_model.safetensors"))


def trainer(config) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "trainer.py"), "--config", str(config)]


@pytest.fixture(scope="module")
def straight(tiny_config_factory):
    run_dir, config = tiny_config_factory("straight", **SETTINGS)
    run_command(trainer(config))
    return weights(run_dir)


@pytest.fixture(scope="module")
def tiny_config_factory(tiny_assets, tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("stop")

    def write(name: str, **overrides):
        run_dir = root / name
        # accumulation 2 (config.yaml's default) and a warm-up + cosine schedule, as in the reference run
        defaults = {"gradient_accumulation_steps": 2, "learning_rate": 1e-3}
        config = tiny_overlay(tiny_assets, run_dir, **{**defaults, **overrides})
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return run_dir, path

    return write


def assert_resumes_to(run_dir, config, expected: dict) -> None:
    result = run_command([*trainer(config), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in result.stderr
    actual = weights(run_dir)
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_exit_0(straight, tiny_config_factory, signum):
    run_dir, config = tiny_config_factory(f"signal-{signum}", **SETTINGS)
    process = subprocess.Popen(trainer(config), cwd=REPO_ROOT, env=launch_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not complete_checkpoints(run_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # training has started once checkpoint-10 exists
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert f"({signal.Signals(signum).name}) after writing checkpoint-" in stderr
    steps = [int(p.name.split("-")[1]) for p in complete_checkpoints(run_dir)]
    assert 10 < steps[-1] < 40 and not (run_dir / "transformer").exists()  # stopped early, at a step of its own
    assert_resumes_to(run_dir, config, straight)


def test_max_train_time_stops_and_resume_finishes_like_a_straight_run(straight, tiny_config_factory):
    run_dir, config = tiny_config_factory("timed", **SETTINGS, max_train_time_minutes=1e-4)  # 6 ms: the first step
    result = run_command(trainer(config))
    assert "(max_train_time_minutes) after writing checkpoint-1" in result.stderr
    assert [p.name for p in complete_checkpoints(run_dir)] == ["checkpoint-1"]
    _, unlimited = tiny_config_factory("timed", **SETTINGS)  # the same run folder, without the limit
    assert_resumes_to(run_dir, unlimited, straight)
