"""Launch entry scripts the way a user does (`accelerate launch ...`), in a clean environment. Imported by tests."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launched script: ours, without ambient ACCELERATE_*/OMP_* settings that would change
    what `accelerate launch` builds (e.g. ACCELERATE_USE_CPU drops DeepSpeed), with one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_"))}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(launcher: list[str], script: str, *args: str) -> list[str]:
    """`accelerate launch <launcher args> --num_cpu_threads_per_process 1 --main_process_port P script args`."""
    base = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_cpu_threads_per_process", "1"]
    return [*base, "--main_process_port", str(free_port()), str(REPO_ROOT / script), *args]


def run_command(command: list[str], cwd: Path = REPO_ROOT, check: bool = True, env: dict | None = None):
    result = subprocess.run(command, cwd=cwd, env=env or launch_env(), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command[3:])} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def run_script(script: str, *args: str, processes: int = 1, cwd: Path = REPO_ROOT, check: bool = True):
    """Run an entry script through `accelerate launch` exactly as a user would, on 1 or 2 CPU processes."""
    accelerate_config = "cpu_1proc.yaml" if processes == 1 else "cpu_2proc.yaml"
    launcher = ["--config_file", str(REPO_ROOT / "configs" / "accelerate" / accelerate_config)]
    return run_command(accelerate_command(launcher, script, *args), cwd=cwd, check=check)


def tiny_overlay(assets: dict[str, Path], output_dir: Path, **overrides) -> dict:
    """Settings of a run on the tiny assets: the real demo config, shrunk further; `overrides` win."""
    return {
        "pretrained_model_name_or_path": str(assets["model"]),
        "dataset_path": str(assets["data"]),
        "cache_dir": str(assets["cache"]),
        "output_dir": str(output_dir),
        "resolution": 64,
        "max_sequence_length": 8,  # 8 CLIP + 8 T5 text tokens, as in the demo: fast steps
        "mixed_precision": "no",  # fp32 on CPU: exact comparisons, and bf16 autocast is slow here
        "train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_train_steps": 2,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "validation_steps": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "num_worst_panels": 2,
        "num_sample_panels": 1,
        **overrides,
    }


def logged(run_dir: Path, tag: str) -> dict[int, float]:
    """A scalar the trainer logged to tensorboard (RUN/logs), by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in (run_dir / "logs").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({event.step: event.value for event in events.Scalars(tag)})
    return dict(sorted(values.items()))
