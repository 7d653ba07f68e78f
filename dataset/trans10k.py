"""Trans10k on disk: layout discovery, validation, the datasets (training, evaluation, and plain images for
prediction), the training sampler and the evaluation/prediction collate.

Layout (image ``<stem>.jpg``, ``.jpeg`` or ``.png``; mask ``<stem>_mask.png`` with the same stem)::

    root/train/{images,masks}/
    root/validation/{easy,hard}/{images,masks}/
    root/test/{easy,hard}/{images,masks}/

Bad data never passes silently: discovery and validation collect every problem and raise one ``DatasetError``
listing them, and a file that fails while loading an item raises ``DatasetError`` naming it.

Training augmentation is reproducible: ``TrainSampler`` yields ``(index, aug_seed)`` keys, and ``Trans10kTrain``
draws all its randomness from a ``torch.Generator`` seeded with ``aug_seed``, so a batch does not depend on the
number of DataLoader workers or on which worker loads it, and a resumed run sees the same batches again.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dataset.transforms import (
    IMAGE_RESAMPLE,
    MASK_RESAMPLE,
    ContentSize,
    Size,
    augment_pair,
    check_mask_classes,
    check_mask_mode,
    check_processing,
    content_size_of,
    draft_jpeg,
    fit_size,
    fit_to_canvas,
    grey_to_classes,
    image_to_tensor,
    mask_grey_level,
    mask_to_tensor,
    min_decode_size,
    place_in_canvas,
    sample_train_augmentation,
    to_upright_rgb,
    upright_8bit,
    upright_size,
    valid_mask,
)

SPLITS = ("train", "validation", "test")
SUBSETS = ("easy", "hard")
# Image pairs per split in the official release; the easy/hard breakdown is not published with the data.
OFFICIAL_SPLIT_SIZES = {"train": 5000, "validation": 1000, "test": 4428}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_mask.png"

EXPECTED_LAYOUT = """\
Expected Trans10k layout (image <stem>.jpg, .jpeg or .png; mask <stem>_mask.png):
  {root}/
    train/images/               train/masks/
    validation/easy/images/     validation/easy/masks/
    validation/hard/images/     validation/hard/masks/
    test/easy/images/           test/easy/masks/
    test/hard/images/           test/hard/masks/"""

# What PIL raises on a missing, unreadable, corrupt or truncated file (UnidentifiedImageError is an OSError).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class DatasetError(ValueError):
    """Trans10k data that cannot be used as is; the message names the file(s) and says what to do."""


@dataclass(frozen=True)
class Sample:
    """One image/mask pair on disk."""

    image_path: Path
    mask_path: Path
    stem: str
    split: str
    subset: str  # "easy" or "hard"; "" for train


# ---------------------------------------------------------------------------------------------------------------------
# Layout discovery


@dataclass
class SplitScan:
    """What ``scan_split`` found: the matched pairs and the problems met on the way, without opening any file."""

    samples: list[Sample] = field(default_factory=list)
    layout_problems: list[str] = field(default_factory=list)  # missing or empty folders
    pairing_problems: list[str] = field(default_factory=list)  # image without mask, mask without image, duplicates

    @property
    def problems(self) -> list[str]:
        return self.layout_problems + self.pairing_problems


def expected_layout(root: str | Path) -> str:
    return EXPECTED_LAYOUT.format(root=root)


def split_folders(root: str | Path, split: str, subsets: Sequence[str] = SUBSETS) -> list[tuple[str, Path]]:
    """(subset, folder holding images/ and masks/) for a split; train has the single subset ""."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    unknown = [subset for subset in subsets if subset not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown subset(s) {unknown}; expected some of {SUBSETS}")
    split_dir = Path(root) / split
    if split == "train":
        return [("", split_dir)]
    return [(subset, split_dir / subset) for subset in subsets]


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]


def _images_by_stem(images_dir: Path, scan: SplitScan) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in sorted(_files(images_dir)):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            scan.pairing_problems.append(
                f"two images for stem {path.stem!r}: {images[path.stem]} and {path}; keep one"
            )
            continue
        images[path.stem] = path
    return images


def _masks_by_stem(masks_dir: Path) -> dict[str, Path]:
    return {
        path.name[: -len(MASK_SUFFIX)]: path for path in _files(masks_dir) if path.name.lower().endswith(MASK_SUFFIX)
    }


def _scan_folder(folder: Path, split: str, subset: str, scan: SplitScan) -> None:
    images_dir, masks_dir = folder / "images", folder / "masks"
    missing = [str(path) for path in (folder, images_dir, masks_dir) if not path.is_dir()]
    if missing:
        scan.layout_problems.append(f"missing folder {missing[0]}")
        return
    images = _images_by_stem(images_dir, scan)
    masks = _masks_by_stem(masks_dir)
    if not images:
        scan.layout_problems.append(f"empty folder: no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    if not masks:
        scan.layout_problems.append(f"empty folder: no masks (*{MASK_SUFFIX}) in {masks_dir}")
    if not images or not masks:
        return
    for stem in sorted(images.keys() - masks.keys()):
        expected_mask = masks_dir / f"{stem}{MASK_SUFFIX}"
        scan.pairing_problems.append(
            f"image without mask: {images[stem]} (expected {expected_mask}); add the mask or remove the image"
        )
    for stem in sorted(masks.keys() - images.keys()):
        scan.pairing_problems.append(
            f"mask without image: {masks[stem]} (expected {images_dir / stem}.jpg, .jpeg or .png); "
            "add the image or remove the mask"
        )
    for stem in sorted(images.keys() & masks.keys()):
        scan.samples.append(Sample(images[stem], masks[stem], stem, split, subset))


def scan_split(root: str | Path, split: str, subsets: Sequence[str] = SUBSETS) -> SplitScan:
    """Pair images with masks in one split and collect layout/pairing problems instead of raising."""
    folders = split_folders(root, split, subsets)  # validates split and subsets first
    scan = SplitScan()
    if not Path(root).is_dir():
        scan.layout_problems.append(f"dataset folder {root} does not exist")
        return scan
    if not (Path(root) / split).is_dir():
        scan.layout_problems.append(f"missing split folder {Path(root) / split}")
        return scan
    for subset, folder in folders:
        _scan_folder(folder, split, subset, scan)
    return scan


def _problem_report(header: str, problems: Sequence[str]) -> str:
    return "\n".join([f"{header} ({len(problems)} problem(s)):", *(f"  - {problem}" for problem in problems)])


def _raise_for_problems(root: str | Path, split: str, scan: SplitScan, file_problems: Sequence[str] = ()) -> None:
    problems = [*scan.problems, *file_problems]
    if not problems:
        return
    message = _problem_report(f"Trans10k {split} split at {root}", problems)
    if scan.layout_problems:
        message += "\n" + expected_layout(root)
    message += f"\nFix the files listed, then run `python -m dataset.check {root}` to check the whole dataset."
    raise DatasetError(message)


def find_samples(root: str | Path, split: str, subsets: Sequence[str] = SUBSETS) -> list[Sample]:
    """Image/mask pairs of a split, sorted by subset (in the order given) then stem. Does not open any file.

    Raises DatasetError listing every missing or empty folder (with the expected layout), image without mask and
    mask without image.
    """
    scan = scan_split(root, split, subsets)
    _raise_for_problems(root, split, scan)
    return scan.samples


# ---------------------------------------------------------------------------------------------------------------------
# File checks and loading


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any PIL read failure inside the block into a DatasetError naming the file."""
    try:
        yield
    except DatasetError:
        raise
    except _READ_ERRORS as error:
        raise DatasetError(
            f"cannot read {what} {path}: {error}. Replace it (re-download) or remove the pair; "
            "`python -m dataset.check ROOT --deep` lists every unreadable file."
        ) from error


def size_mismatch_message(image_path: Path, image_size: Size, mask_path: Path, mask_size: Size) -> str:
    message = (
        f"size mismatch: image {image_path} is {image_size[0]}x{image_size[1]} (after EXIF orientation), "
        f"mask {mask_path} is {mask_size[0]}x{mask_size[1]}"
    )
    if image_size == mask_size[::-1]:
        message += "; rotated pair? (width and height swapped: check the image's EXIF orientation or rotate the mask)"
    return message


def _check_pair_size(sample: Sample, image_size: Size, mask_size: Size) -> None:
    if image_size != mask_size:
        raise DatasetError(size_mismatch_message(sample.image_path, image_size, sample.mask_path, mask_size))


def _check_resolution(resolution: int) -> None:
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")


def _probe(path: Path, what: str, deep: bool, problems: list[str]) -> Size | None:
    """Upright size from the header (fully decoding if deep); appends a problem and returns None if unreadable."""
    try:
        with _reading(path, what), Image.open(path) as image:
            if what == "mask":
                check_mask_mode(image.mode)
            if deep:
                image.load()
            return upright_size(image)
    except DatasetError as error:
        problems.append(str(error))
        return None


def find_problems(samples: Sequence[Sample], deep: bool = False) -> list[str]:
    """Every unreadable file and image/mask size mismatch among ``samples``.

    Reads headers only (fast) unless ``deep``, which decodes every file and so also catches truncated data.
    """
    problems: list[str] = []
    for sample in samples:
        image_size = _probe(sample.image_path, "image", deep, problems)
        mask_size = _probe(sample.mask_path, "mask", deep, problems)
        if image_size is not None and mask_size is not None and image_size != mask_size:
            problems.append(size_mismatch_message(sample.image_path, image_size, sample.mask_path, mask_size))
    return problems


def validate_split(root: str | Path, split: str, subsets: Sequence[str] = SUBSETS, deep: bool = False) -> list[Sample]:
    """find_samples + find_problems: the split's samples, or one DatasetError listing all problems."""
    scan = scan_split(root, split, subsets)
    _raise_for_problems(root, split, scan, find_problems(scan.samples, deep=deep))
    return scan.samples


def read_image_size(path: str | Path) -> Size:
    """(width, height) of the upright image, from the header only."""
    path = Path(path)
    with _reading(path, "image"), Image.open(path) as image:
        return upright_size(image)


def _decode_image(path: Path, min_size: Size | None) -> tuple[Image.Image, int, Size]:
    """(upright RGB image, JPEG draft factor, upright size of the full image, read from the header before drafting)."""
    with _reading(path, "image"), Image.open(path) as image:
        full_size = upright_size(image)
        draft_factor = draft_jpeg(image, min_size) if min_size is not None else 1
        return to_upright_rgb(upright_8bit(image)), draft_factor, full_size


def load_image(path: str | Path, draft_size: Size | None = None) -> Image.Image:
    """Upright RGB image (EXIF orientation applied; 16-bit and float grey scaled to 8 bits over their full range, see
    dataset.transforms.upright_8bit). ``draft_size`` (width, height) lets a JPEG decode at a reduced scale that is
    still at least that size: much faster when the image will be shrunk anyway."""
    image, _, _ = _decode_image(Path(path), draft_size)
    return image


def load_mask_grey(path: str | Path) -> Image.Image:
    """Mode-L mask of grey levels (0 background, 85 things, 255 stuff); see dataset.transforms."""
    path = Path(path)
    with _reading(path, "mask"), Image.open(path) as mask:
        return mask_grey_level(mask)


# ---------------------------------------------------------------------------------------------------------------------
# Training


def _hash_seed(*parts: object) -> int:
    """A 64-bit seed from labelled parts: distinct parts give unrelated seeds, on any machine and process."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The aug_seed TrainSampler pairs with ``index`` in ``epoch``."""
    return _hash_seed("augment", seed, epoch, index)


class TrainSampler(torch.utils.data.Sampler):
    """Yields (index, aug_seed) keys: a permutation seeded by (seed, epoch) and a per-sample augmentation seed.

    Every process yields the same sequence (Accelerate shards the batches). Call ``set_epoch`` before each epoch.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(_hash_seed("order", self.seed, self.epoch))
        for index in torch.randperm(self.num_samples, generator=generator).tolist():
            yield index, augmentation_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples


class Trans10kTrain(torch.utils.data.Dataset):
    """Augmented training pairs at ``resolution`` x ``resolution``, with ``valid_mask`` [1, res, res] (1 = image).

    Keys are (index, aug_seed) from TrainSampler, or a plain index (then aug_seed is that of epoch 0).
    random_crop_scale: minimum area fraction of a random resized crop; 1.0 resizes the whole image.
    color_jitter: brightness/contrast/saturation factors drawn in [1 - s, 1 + s] on the image only; 0 disables.
    processing: "square" resizes the crop to the whole canvas (valid_mask all ones); "keep_aspect" fits the crop's
    longest side and pads (dataset.transforms, "Canvas geometry"). Crop, flip and jitter act on the crop before it is
    placed in the canvas, so the padding is always right and below the content, flipped or not. The default is the
    processing of every run before the key existed (config.yaml's processing is the default callers pass).
    mask_classes: how ``mask_values`` encodes the mask (dataset.transforms.mask_to_tensor: 2 or 3 levels).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        resolution: int,
        random_flip: bool,
        color_jitter: float,
        random_crop_scale: float,
        seed: int,
        processing: str = "square",
        mask_classes: str = "binary",
    ) -> None:
        _check_resolution(resolution)
        check_processing(processing)
        check_mask_classes(mask_classes)
        if not 0.0 < random_crop_scale <= 1.0:
            raise ValueError(f"random_crop_scale must be in (0, 1], got {random_crop_scale}")
        if color_jitter < 0.0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        self.samples = list(samples)
        self.resolution = resolution
        self.random_flip = random_flip
        self.color_jitter = color_jitter
        self.random_crop_scale = random_crop_scale
        self.seed = seed
        self.processing = processing
        self.mask_classes = mask_classes

    def __len__(self) -> int:
        return len(self.samples)

    def _index_and_seed(self, key: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(key, tuple | list):
            index, aug_seed = (operator.index(part) for part in key)
        else:
            index = operator.index(key)
            aug_seed = augmentation_seed(self.seed, 0, index)
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        return index, aug_seed

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = self._index_and_seed(key)
        sample = self.samples[index]
        generator = torch.Generator().manual_seed(aug_seed)
        image_size = read_image_size(sample.image_path)
        mask_grey = load_mask_grey(sample.mask_path)
        _check_pair_size(sample, image_size, mask_grey.size)
        augmentation = sample_train_augmentation(
            image_size, generator, self.random_flip, self.color_jitter, self.random_crop_scale
        )
        left, top, right, bottom = augmentation.crop_box
        crop_size = (max(1, round(right - left)), max(1, round(bottom - top)))  # whole pixels for the aspect ratio
        size = fit_size(crop_size, self.resolution, self.processing)
        # Decode the JPEG only as large as the crop needs: at low resolutions this skips most of the IDCT work.
        min_size = min_decode_size(image_size, augmentation.crop_box, size)
        image, draft_factor, _ = _decode_image(sample.image_path, min_size)
        image, mask_grey = augment_pair(image, mask_grey, augmentation, draft_factor, size)
        side = self.resolution
        return {
            "pixel_values": image_to_tensor(place_in_canvas(image, side)),
            "mask_values": mask_to_tensor(np.array(place_in_canvas(mask_grey, side)), self.mask_classes),
            "valid_mask": valid_mask((size[1], size[0]), side),
            "stem": sample.stem,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and prediction: the whole image in the model's canvas (processing square or keep_aspect), no crop, no flip


def model_pixels(image: Image.Image, resolution: int, content_size: ContentSize) -> torch.Tensor:
    """``pixel_values`` [3, resolution, resolution] in [-1, 1] of a whole upright RGB image, as the model sees it:
    resized to ``content_size`` (h, w; ``content_size_of`` its full upright size) in the top-left of the canvas."""
    return image_to_tensor(fit_to_canvas(image, resolution, content_size, IMAGE_RESAMPLE))


class ImageFiles(torch.utils.data.Dataset):
    """Images without ground truth (predict.py): ``pixel_values`` for the model, ``content_size`` (h, w) of the image
    in that canvas and ``valid_mask``, the upright image at its native size (``image``, uint8 H x W x 3, for resizing
    the prediction back and for overlays) and the file's ``stem``."""

    def __init__(self, paths: Sequence[str | Path], resolution: int, processing: str = "square") -> None:
        _check_resolution(resolution)
        check_processing(processing)
        self.paths = [Path(path) for path in paths]
        self.resolution = resolution
        self.processing = processing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        image = load_image(path)  # decoded at full size: the native image is returned too
        content_size = content_size_of(image.size, self.resolution, self.processing)
        return {
            "pixel_values": model_pixels(image, self.resolution, content_size),
            "content_size": content_size,
            "valid_mask": valid_mask(content_size, self.resolution),
            "image": np.asarray(image),
            "stem": path.stem,
        }


class Trans10kEval(torch.utils.data.Dataset):
    """Trans10k pairs: ``pixel_values`` (``model_pixels``), the mask image in the same canvas (``mask_values``, encoded
    by ``mask_classes`` as in training: what the VAE oracle encodes), ``content_size`` (h, w) of the image in
    the canvas and ``valid_mask``, the ground-truth classes at their native size (``gt_classes``), stem and subset.
    The processing default is that of every run before the key existed; callers pass config.yaml's processing."""

    def __init__(
        self, samples: Sequence[Sample], resolution: int, processing: str = "square", mask_classes: str = "binary"
    ) -> None:
        _check_resolution(resolution)
        check_processing(processing)
        check_mask_classes(mask_classes)
        self.samples = list(samples)
        self.resolution = resolution
        self.processing = processing
        self.mask_classes = mask_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        side = self.resolution
        mask_grey = load_mask_grey(sample.mask_path)
        image_size = read_image_size(sample.image_path)
        _check_pair_size(sample, image_size, mask_grey.size)
        # The JPEG is decoded only as large as the canvas needs; the pair check uses the upright size from the header.
        image, _, _ = _decode_image(sample.image_path, fit_size(image_size, side, self.processing))
        content_size = content_size_of(image_size, side, self.processing)
        mask_canvas = fit_to_canvas(mask_grey, side, content_size, MASK_RESAMPLE)
        return {
            "pixel_values": model_pixels(image, side, content_size),
            "mask_values": mask_to_tensor(np.array(mask_canvas), self.mask_classes),
            "content_size": content_size,
            "valid_mask": valid_mask(content_size, side),
            "gt_classes": torch.from_numpy(grey_to_classes(np.array(mask_grey))),
            "stem": sample.stem,
            "subset": sample.subset,
        }


_STACKED_KEYS = ("pixel_values", "mask_values", "valid_mask")


def eval_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The collate of ``Trans10kEval`` and ``ImageFiles``: stack the model-sized tensors; keep native-size ground
    truths and images, the content sizes and the metadata as per-item lists."""
    collated: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        collated[key] = torch.stack(values) if key in _STACKED_KEYS else values
    return collated
