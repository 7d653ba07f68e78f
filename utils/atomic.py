"""Writes that a kill at any instant cannot leave half done: write under a temporary name, then rename into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path`, unique per process, so two processes never write the same temporary."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder `new` to `target`, replacing what is there.

    The old folder is renamed aside before the new one takes its place and deleted only afterwards, so at every
    instant one complete copy exists under some name.
    """
    if not target.exists():
        os.rename(new, target)
        return
    old = temporary_sibling(target, "old")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)
