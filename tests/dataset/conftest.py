"""Builders of tiny Trans10k trees on disk (40x30 images) for the dataset tests, handed out as fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from zlib import crc32

import numpy as np
import pytest
from PIL import Image

from dataset.transforms import STUFF_GREY, THINGS_GREY

IMAGE_SIZE = (40, 30)  # (width, height)
EXIF_ORIENTATION_TAG = 0x0112


def _write_image(path: Path, size: tuple[int, int] = IMAGE_SIZE, exif_orientation: int | None = None) -> Path:
    """A noisy RGB image (format from the suffix), optionally with an EXIF Orientation tag."""
    rng = np.random.default_rng(crc32(path.name.encode()))
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[EXIF_ORIENTATION_TAG] = exif_orientation
    image.save(path, exif=exif)
    return path


def _write_mask(path: Path, size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """Mode-L mask: things (85) in the left third, stuff (255) in the top-right corner, background elsewhere."""
    width, height = size
    grey = np.zeros((height, width), dtype=np.uint8)
    grey[:, : width // 3] = THINGS_GREY
    grey[: height // 2, 2 * width // 3 :] = STUFF_GREY
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey, mode="L").save(path)
    return path


def subset_dirs(root: Path) -> dict[tuple[str, str], Path]:
    return {
        ("train", ""): root / "train",
        **{(split, subset): root / split / subset for split in ("validation", "test") for subset in ("easy", "hard")},
    }


def build_tree(root: Path, per_folder: int = 2, size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """A complete, clean Trans10k tree with ``per_folder`` JPEG/PNG pairs in train and in every subset."""
    for (split, subset), folder in subset_dirs(root).items():
        for i in range(per_folder):
            stem = f"{split[:2]}{subset}{i}"
            _write_image(folder / "images" / f"{stem}.jpg", size)
            _write_mask(folder / "masks" / f"{stem}_mask.png", size)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "Trans10k")


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    def make(per_folder: int = 2, size: tuple[int, int] = IMAGE_SIZE, name: str = "Trans10k") -> Path:
        return build_tree(tmp_path / name, per_folder, size)

    return make


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """write_image(path, size=(40, 30), exif_orientation=None): noisy RGB image, format from the suffix."""
    return _write_image


@pytest.fixture
def write_mask() -> Callable[..., Path]:
    """write_mask(path, size=(40, 30)): L mask with things (85) on the left third and stuff (255) top right."""
    return _write_mask
