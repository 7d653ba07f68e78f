"""Caches of derived data (the empty-prompt conditioning, VAE latents): where they live and how entries are keyed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "transparency_sd35"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The `cache_dir` key's folder, or the default when it is null."""
    return Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR


def file_stamp(path: Path) -> tuple[str, int, int]:
    """(path, size, mtime in ns): changes whenever the file is rewritten, without reading it."""
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def content_key(payload: object) -> str:
    """16 hex digits of the SHA-256 of `payload` as canonical JSON: the same settings give the same key."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
