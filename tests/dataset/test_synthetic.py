"""The synthetic Trans10k generator: layout, mask values, difficulty, size variety and reproducibility."""

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.synthetic import HEIGHT_RANGE, WIDTH_RANGE, resolve_counts, write_synthetic_trans10k
from dataset.transforms import STUFF_GREY, THINGS_GREY

SMALL_COUNTS = {"train": 12, "validation/easy": 3, "validation/hard": 3, "test/easy": 16, "test/hard": 16}
SPLIT_FOLDERS = ["train", "validation/easy", "validation/hard", "test/easy", "test/hard"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "trans10k"
    write_synthetic_trans10k(root, seed=0, counts=SMALL_COUNTS)
    return root


def read_pairs(folder: Path) -> list[tuple[Image.Image, Image.Image]]:
    pairs = []
    for image_path in sorted((folder / "images").glob("*.jpg")):
        pairs.append((Image.open(image_path), Image.open(folder / "masks" / f"{image_path.stem}_mask.png")))
    return pairs


def object_areas(mask: np.ndarray) -> list[int]:
    """Pixel counts of the 4-connected foreground components (no scipy in the environment)."""
    seen = np.zeros(mask.shape, dtype=bool)
    areas = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, area = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            area += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        areas.append(area)
    return areas


def test_layout_matches_trans10k(tree: Path) -> None:
    for name in SPLIT_FOLDERS:
        folder = tree / name
        image_stems = sorted(p.stem for p in (folder / "images").iterdir())
        mask_stems = sorted(p.name.removesuffix("_mask.png") for p in (folder / "masks").iterdir())
        assert image_stems == mask_stems, f"{name}: every image needs exactly one <stem>_mask.png"
        assert len(image_stems) == SMALL_COUNTS[name]
        assert all((folder / "images" / f"{stem}.jpg").is_file() for stem in image_stems)
    assert sorted(p.name for p in tree.iterdir()) == ["test", "train", "validation"]


def test_images_and_masks_agree_in_size_mode_and_values(tree: Path) -> None:
    values_seen: set[int] = set()
    for name in SPLIT_FOLDERS:
        for image, mask in read_pairs(tree / name):
            assert image.format == "JPEG" and image.mode == "RGB"
            assert mask.format == "PNG" and mask.mode == "L"
            assert image.size == mask.size
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values <= {0, STUFF_GREY, THINGS_GREY}
            values_seen |= values
    assert {STUFF_GREY, THINGS_GREY} <= values_seen, "both Trans10k classes must occur"


def test_native_sizes_vary_and_are_mostly_not_square(tree: Path) -> None:
    sizes = [image.size for name in SPLIT_FOLDERS for image, _ in read_pairs(tree / name)]
    widths, heights = zip(*sizes, strict=True)
    assert WIDTH_RANGE[0] <= min(widths) and max(widths) <= WIDTH_RANGE[1]
    assert HEIGHT_RANGE[0] <= min(heights) and max(heights) <= HEIGHT_RANGE[1]
    assert len(set(sizes)) > len(sizes) // 2
    assert sum(w != h for w, h in sizes) > 0.8 * len(sizes)


def test_hard_objects_are_smaller_than_easy_ones(tree: Path) -> None:
    def mean_object_fraction(folder: Path) -> float:
        fractions = []
        for _, mask in read_pairs(folder):
            things = np.asarray(mask) == THINGS_GREY
            fractions += [area / things.size for area in object_areas(things)]
        return float(np.mean(fractions))

    easy, hard = mean_object_fraction(tree / "test/easy"), mean_object_fraction(tree / "test/hard")
    assert hard < 0.6 * easy, (easy, hard)


def test_objects_are_not_a_colour_threshold(tree: Path) -> None:
    """The best per-image grey-level threshold must not segment the glass well: the cue is distortion, not colour."""
    best_ious = []
    for image, mask in read_pairs(tree / "test/easy"):
        grey = np.asarray(image.convert("L"), dtype=np.int16)
        target = np.asarray(mask) > 0
        if not target.any():
            continue
        best = 0.0
        for threshold in range(8, 256, 8):
            for predicted in (grey >= threshold, grey < threshold):
                best = max(best, (predicted & target).sum() / (predicted | target).sum())
        best_ious.append(best)
    assert np.mean(best_ious) < 0.75, np.mean(best_ious)


def test_same_seed_gives_byte_identical_files(tree: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_synthetic_trans10k(again, seed=0, counts=SMALL_COUNTS)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (tree / relative).read_bytes() == (again / relative).read_bytes(), relative


def test_different_seed_gives_different_data(tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_synthetic_trans10k(other, seed=1, counts=SMALL_COUNTS)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    different = [f for f in files if (tree / f).read_bytes() != (other / f).read_bytes()]
    assert len(different) > 0.9 * len(files)


def test_counts_accept_both_key_forms_and_reject_unknown_splits() -> None:
    counts = resolve_counts({"train": 5, ("test", "hard"): 7})
    assert counts[("train", None)] == 5 and counts[("test", "hard")] == 7
    assert counts[("test", "easy")] == 60  # the demo default is kept
    with pytest.raises(ValueError, match="unknown split"):
        resolve_counts({"test/medium": 3})
