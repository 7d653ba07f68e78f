"""Write what a result needs to be traced: the resolved config, the git commit (and dirty flag), package versions."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from utils.atomic import atomic_write_json, atomic_write_text
from utils.config import REPO_ROOT, dump_config

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "deepspeed", "safetensors", "numpy", "pillow")


def git_state(repo: Path = REPO_ROOT) -> dict:
    """Commit hash and whether tracked files differ from it; None values outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_snapshot(args: argparse.Namespace, directory: str | Path) -> None:
    """`config.yaml` (resolved, reusable with --config) and `run_info.json` in `directory`."""
    directory = Path(directory)
    atomic_write_text(directory / "config.yaml", dump_config(args))
    info = {
        "command": [sys.executable, *sys.argv],
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "git": git_state(),
        "packages": package_versions(),
    }
    atomic_write_json(directory / "run_info.json", info)
