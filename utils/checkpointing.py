"""Atomic, self-describing `checkpoint-<step>/` folders: written under a temporary name, renamed, then old ones pruned.

A checkpoint counts only when its folder is named `checkpoint-<step>` AND holds `checkpoint.json` (written last, just
before the rename), so `latest` never picks a half-written one. The order of a save is write -> rename -> prune, and a
pruned checkpoint is renamed out of the complete set before it is deleted: a kill at any instant leaves at least as
many complete checkpoints as there were before the save began. During a save there is one checkpoint more than
`checkpoints_total_limit` on disk.

With validation on, `checkpoint-best/` holds the weights (not the training state) of the step with the best
validation IoU so far, and `best.json` (written last) says which step and IoU. It is replaced the same way (written
aside, renamed in), outside the count and the pruning of `checkpoint-<step>` folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from utils.atomic import atomic_write_json

MARKER = "checkpoint.json"
BEST = "checkpoint-best"
BEST_MARKER = "best.json"  # {"step", "val/iou", ...}: what checkpoint-best/ holds
_NAME = re.compile(r"^checkpoint-(\d+)$")
# What an interrupted save can leave behind: the folder being written, a same-step folder moved aside, a doomed one.
_LEFTOVER = re.compile(r"^\.checkpoint-(\d+|best)\.(tmp|old|deleting)$")


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


def _sibling(output_dir: Path, step: int | str, kind: str) -> Path:
    return output_dir / f".checkpoint-{step}.{kind}"


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete the oldest complete checkpoints so that `keep` remain (0 keeps all). Call it after a save completed."""
    if keep <= 0:
        return []
    found = complete_checkpoints(output_dir)
    doomed = found[: max(0, len(found) - keep)]
    for path in doomed:
        # Out of the complete set first (one atomic rename), so a kill mid-delete never leaves a gutted "checkpoint".
        trash = _sibling(path.parent, checkpoint_step(path), "deleting")
        os.rename(path, trash)
        shutil.rmtree(trash)
    return doomed


def publish_checkpoint(tmp_dir: Path, step: int, metadata: dict) -> Path:
    """Write the marker last, then rename into place (main process only, after every rank finished writing)."""
    final = tmp_dir.parent / f"checkpoint-{step}"
    atomic_write_json(tmp_dir / MARKER, {"step": step, **metadata})
    # The same step from an earlier run (e.g. resumed from an older checkpoint) is kept until the new one is in place.
    _move_into_place(tmp_dir, final, _sibling(final.parent, step, "old"))
    return final


def _move_into_place(tmp_dir: Path, final: Path, old: Path) -> None:
    """Rename the complete `tmp_dir` to `final`; an existing `final` is renamed to `old` first, deleted last."""
    if not final.exists():
        os.rename(tmp_dir, final)
        return
    if old.exists():
        shutil.rmtree(old)
    os.rename(final, old)
    os.rename(tmp_dir, final)
    shutil.rmtree(old)


def best_record(output_dir: str | Path) -> dict | None:
    """checkpoint-best/best.json ({"step", "val/iou", ...}), or None when there is no complete best checkpoint."""
    marker = Path(output_dir) / BEST / BEST_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def save_best_checkpoint(
    save_weights: Callable[[Path], None],
    output_dir: str | Path,
    record: dict,
    is_main: bool,
    barrier: Callable[[], None],
) -> Path:
    """Every rank runs `save_weights(tmp_dir)` (a gather under ZeRO-3); the main rank writes `record` as best.json
    and replaces checkpoint-best/ with it. A kill at any instant leaves the previous best (or the new one) whole."""
    output_dir = Path(output_dir)
    tmp_dir = _sibling(output_dir, "best", "tmp")
    if is_main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    barrier()
    save_weights(tmp_dir)
    barrier()
    final = output_dir / BEST
    if is_main:
        atomic_write_json(tmp_dir / BEST_MARKER, record)
        _move_into_place(tmp_dir, final, _sibling(output_dir, "best", "old"))
    barrier()
    return final


def save_checkpoint(
    save_state: Callable[[str], None],
    output_dir: str | Path,
    step: int,
    metadata: dict,
    keep: int,
    is_main: bool,
    barrier: Callable[[], None],
) -> Path:
    """Every rank runs `save_state(tmp_dir)`; the main rank then publishes it and prunes beyond `keep`."""
    output_dir = Path(output_dir)
    tmp_dir = _sibling(output_dir, step, "tmp")
    if is_main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    barrier()
    save_state(str(tmp_dir))
    barrier()
    final = output_dir / f"checkpoint-{step}"
    if is_main:
        publish_checkpoint(tmp_dir, step, metadata)
        prune_checkpoints(output_dir, keep)
    barrier()
    return final


def recover_interrupted_save(output_dir: str | Path) -> list[str]:
    """At start-up (main process): finish or remove what a killed save left behind; one message per action.

    A leftover that holds its marker is a complete checkpoint caught between two renames: it is put back in place
    unless a complete `checkpoint-<step>` already exists. Anything else (half written, half deleted) is removed.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    actions = []
    for path in sorted(p for p in output_dir.iterdir() if _LEFTOVER.match(p.name)):
        step, kind = _LEFTOVER.match(path.name).groups()
        final = output_dir / f"checkpoint-{step}"
        marker = BEST_MARKER if step == "best" else MARKER
        if kind != "deleting" and (path / marker).is_file() and not (final / marker).is_file():
            if final.exists():
                shutil.rmtree(final)
            os.rename(path, final)
            actions.append(f"restored {final.name} from {path.name}, left complete by an interrupted save")
        else:
            shutil.rmtree(path)
            actions.append(f"removed {path.name}, left incomplete by an interrupted save")
    return actions
