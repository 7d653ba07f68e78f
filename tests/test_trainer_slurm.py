"""configs/slurm/train_multinode.sbatch under fake SLURM: the per-node accelerate command, SIGUSR1, requeue.

`srun`, `scontrol` and `accelerate` are shell stubs on PATH that log their argv; the stub srun runs its command once
per node with SLURM_NODEID set, as a real srun with one task per node does.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launcher import REPO_ROOT

SCRIPT = REPO_ROOT / "configs" / "slurm" / "train_multinode.sbatch"
SEPARATOR = "----"

SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
while [[ "$1" == --* ]]; do shift; done  # the srun options; then the command
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
    echo $! > "$FAKE_DIR/task-$node.pid"
    wait $! || exit $?
done
"""
SCONTROL = """#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-node-07\\ngpu-node-08\\n'; exit 0; fi
echo "scontrol $*" >> "$FAKE_LOG"
"""
ACCELERATE = """#!/bin/bash
{ printf '%s\\n' "$@"; echo "----"; } >> "$FAKE_DIR/accelerate.argv"
if [[ -n "${FAKE_TRAINER:-}" ]]; then "$FAKE_PYTHON" -c "$FAKE_TRAINER" & wait $!; fi
"""
# A trainer stand-in: installs a SIGUSR1 handler (as trainer.py's StopRequest does) and exits 0 when it fires.
TRAINER = """
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: (open(os.environ["FAKE_DIR"] + "/stopped", "w").write("USR1"), sys.exit(0)))
open(os.environ["FAKE_DIR"] + "/trainer-ready", "w").close()
time.sleep(60)
sys.exit(3)
"""


@pytest.fixture
def fake_slurm(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": SRUN, "scontrol": SCONTROL, "accelerate": ACCELERATE}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "log"),
        "FAKE_PYTHON": sys.executable,
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_JOB_ID": "4242",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "OUTPUT_DIR": str(tmp_path / "run"),
    }


def launches(tmp_path: Path) -> list[list[str]]:
    text = (tmp_path / "accelerate.argv").read_text()
    return [block.strip("\n").split("\n") for block in text.split(SEPARATOR + "\n") if block.strip()]


def log_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "log").read_text().splitlines()


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_one_accelerate_launch_per_node_with_slurms_rank_address_and_count(fake_slurm, tmp_path):
    trainer_args = ["--config", "my runs/a b.yaml", "--learning_rate", "1e-5"]  # a space survives the quoting
    subprocess.run(["bash", str(SCRIPT), *trainer_args], env=fake_slurm, check=True, cwd=tmp_path)
    expected = [
        [
            "launch", "--config_file", str(REPO_ROOT / "configs" / "accelerate" / "multi_node.yaml"),
            "--num_machines", "2", "--num_processes", "8", "--machine_rank", str(rank),
            "--main_process_ip", "gpu-node-07", "--main_process_port", "29500",
            str(REPO_ROOT / "trainer.py"), "--output_dir", str(tmp_path / "run"),
            "--resume_from_checkpoint", "latest", *trainer_args,
        ]
        for rank in (0, 1)
    ]  # fmt: skip
    assert launches(tmp_path) == expected
    lines = log_lines(tmp_path)
    assert lines[0] == "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c node_task"
    assert lines[1] == "scontrol requeue 4242"  # no train_summary.json: the run is not finished


def test_a_finished_run_is_not_requeued_and_output_dir_is_required(fake_slurm, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_summary.json").write_text("{}")
    subprocess.run(["bash", str(SCRIPT)], env=fake_slurm, check=True, cwd=tmp_path)
    assert not any(line.startswith("scontrol") for line in log_lines(tmp_path))
    missing = subprocess.run(
        ["bash", str(SCRIPT)], env={**fake_slurm, "OUTPUT_DIR": ""}, cwd=tmp_path, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "OUTPUT_DIR" in missing.stderr


def test_sigusr1_reaches_the_trainer_not_the_launcher_and_the_job_requeues(fake_slurm, tmp_path):
    env = {**fake_slurm, "SLURM_NNODES": "1", "FAKE_TRAINER": TRAINER}
    process = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    ready, task_pid = tmp_path / "trainer-ready", tmp_path / "task-0.pid"  # the stub srun writes the pid after `&`
    while not (ready.exists() and task_pid.exists() and task_pid.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    task = int(task_pid.read_text())
    os.kill(task, signal.SIGUSR1)  # what --signal=USR1@120 sends to the step's task
    assert process.wait(timeout=60) == 0
    assert (tmp_path / "stopped").read_text() == "USR1"  # the trainer's handler ran; it exited 0
    assert log_lines(tmp_path)[-1] == "scontrol requeue 4242"


def test_a_crashed_trainer_fails_the_job_and_is_not_requeued(fake_slurm, tmp_path):
    env = {**fake_slurm, "SLURM_NNODES": "1", "FAKE_TRAINER": "import sys; sys.exit(3)"}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp_path)
    assert result.returncode == 3  # the launcher's own status, not a 138 or 0 from the wait loop
    assert not any(line.startswith("scontrol") for line in log_lines(tmp_path))
