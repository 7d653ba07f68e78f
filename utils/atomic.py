"""Writes that a kill at any instant cannot leave half done: write under a temporary name, then rename into place.

Every file and folder the project writes goes through here: text, JSON, CSV, images and safetensors through
`atomic_path`, folders through `replace_dir`. A reader sees the old content or the new, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside `path`, unique per process and thread, so no two writers ever share a temporary."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{threading.get_ident()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; on success it replaces `path`, on error it is removed.

    Writers that infer a format from the suffix (PIL) must be given the format: the temporary has another suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")  # NaN is not JSON: fail here


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
