"""Atomic, self-describing `checkpoint-<step>/` folders: written under a temporary name, renamed when complete.

A checkpoint counts only when its folder is named `checkpoint-<step>` AND holds `checkpoint.json` (written last, just
before the rename), so `latest` never picks a half-written one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from utils.run_snapshot import atomic_write_text

MARKER = "checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was written at (from its marker, else its name)."""
    path = Path(path)
    marker = path / MARKER
    if marker.is_file():
        return int(json.loads(marker.read_text())["step"])
    match = _NAME.match(path.name)
    if not match:
        raise ValueError(f"{path}: not a checkpoint-<step> folder")
    return int(match.group(1))


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """`latest` -> newest complete checkpoint or None (fresh start); a path -> that checkpoint, which must exist."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if not (path / MARKER).is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint {resume_from_checkpoint}: {path} is not a complete checkpoint (no {MARKER}); "
            f"use 'latest' or one of: {[p.name for p in complete_checkpoints(output_dir)] or 'none yet'}"
        )
    return path


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints so that `keep - 1` remain (room for the one about to be written)."""
    if keep <= 0:
        return []
    found = complete_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - (keep - 1))]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f".checkpoint-{step}.tmp"


def finalize_checkpoint(tmp_dir: Path, step: int, metadata: dict) -> Path:
    """Write the marker last, then rename into place (main process only, after every rank finished writing)."""
    final = tmp_dir.parent / f"checkpoint-{step}"
    atomic_write_text(tmp_dir / MARKER, json.dumps({"step": step, **metadata}, indent=2) + "\n")
    if final.exists():  # a stale folder from an interrupted run at the same step
        shutil.rmtree(final)
    tmp_dir.rename(final)
    return final


def save_checkpoint(
    save_state: Callable[[str], None], output_dir: str | Path, step: int, metadata: dict, is_main: bool, barrier
) -> Path:
    """Run `save_state(tmp_dir)` on every rank, then rename atomically on the main rank."""
    tmp_dir = temporary_dir(output_dir, step)
    if is_main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    barrier()
    save_state(str(tmp_dir))
    barrier()
    final = tmp_dir.parent / f"checkpoint-{step}"
    if is_main:
        finalize_checkpoint(tmp_dir, step, metadata)
    barrier()
    return final
