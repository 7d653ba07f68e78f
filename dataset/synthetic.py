"""Synthetic Trans10k: small textured scenes with "glass" objects, in the exact Trans10k folder layout.

Hub and dataset downloads are impossible in the demo and test environments, so this generator stands in for Trans10k:

    root/train/{images,masks}/
    root/{validation,test}/{easy,hard}/{images,masks}/
    images/<stem>.jpg, masks/<stem>_mask.png (mode L: 0 background, 85 "things", 255 "stuff")

A glass object is drawn as a refraction-like displacement of the background inside its outline, plus a slight tint,
specular highlights and a darker or brighter rim, so a model has to learn shape and distortion cues rather than a
colour threshold. "hard" scenes have smaller, fainter and more numerous objects. Native sizes vary and are mostly not
square, so predictions have to be resized back to the native size for scoring.

Every image has its own random generator seeded from (seed, split, subset, index): the same seed gives byte-identical
files (PIL writes neither timestamps nor other varying metadata into JPEG or PNG).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset.trans10k import MASK_SUFFIX, split_folders
from dataset.transforms import BACKGROUND_GREY, STUFF_GREY, THINGS_GREY

# (split, subset) -> number of images; subset None is the flat train split.
DEFAULT_COUNTS: dict[tuple[str, str | None], int] = {
    ("train", None): 2400,  # ~8 s to write; measured: 5x more scenes lifted the demo's test IoU 0.38 -> 0.47
    ("validation", "easy"): 24,
    ("validation", "hard"): 24,
    ("test", "easy"): 60,
    ("test", "hard"): 61,  # odd on purpose: batching code must handle a ragged last batch
}

WIDTH_RANGE = (72, 128)  # inclusive native widths
HEIGHT_RANGE = (56, 112)  # inclusive native heights
JPEG_QUALITY = 95
EMPTY_SCENE_PROBABILITY = 0.03  # a few images without any transparent object, as in the real data


@dataclass(frozen=True)
class Difficulty:
    """How visible the objects are: hard scenes use smaller, fainter and more objects."""

    num_things: tuple[int, int]  # inclusive range
    stuff_probability: float
    size_fraction: tuple[float, float]  # object half-extent as a fraction of the shorter image side
    lens_scale_offset: tuple[float, float]  # |magnification - 1| inside an object
    rim_displacement: tuple[float, float]  # pixels of extra displacement along the normal near the outline
    tint_strength: tuple[float, float]
    edge_strength: tuple[float, float]  # brightness change of the rim
    edge_width: tuple[float, float]  # pixels: width of the rim's brightness change
    highlight_strength: tuple[float, float]


# Strengths are set so the cues survive the demo's tiny VAE (image PSNR ~14 dB: it keeps outlines and brightness, not
# fine texture). With rims and tints 2-4x fainter the demo plateaued at test IoU 0.30-0.40 although a small pixel-space
# CNN reached 0.9 on the same images: the VAE, not the model, lost the signal.
EASY = Difficulty(
    num_things=(1, 2),
    stuff_probability=0.3,
    size_fraction=(0.18, 0.36),
    lens_scale_offset=(0.2, 0.4),
    rim_displacement=(1.5, 3.5),
    tint_strength=(0.4, 0.7),
    edge_strength=(0.4, 0.7),
    edge_width=(1.5, 3.0),
    highlight_strength=(0.6, 1.0),
)
HARD = Difficulty(
    num_things=(2, 3),
    stuff_probability=0.2,
    size_fraction=(0.12, 0.24),
    lens_scale_offset=(0.06, 0.18),
    rim_displacement=(0.5, 1.5),
    tint_strength=(0.3, 0.5),
    edge_strength=(0.3, 0.5),
    edge_width=(1.5, 3.0),
    highlight_strength=(0.4, 0.7),
)
DIFFICULTY_OF_SUBSET: dict[str | None, Difficulty] = {None: EASY, "easy": EASY, "hard": HARD}
TRAIN_HARD_FRACTION = 0.4  # the real train split mixes easy and hard scenes


# ---------------------------------------------------------------- backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, size=3)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 3) -> np.ndarray:
    """Band-limited noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = rng.integers(0, 256, size=(cells, cells, channels), dtype=np.uint8)
    planes = [Image.fromarray(grid[..., c]).resize((width, height), Image.BICUBIC) for c in range(channels)]
    return np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in planes], axis=-1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colour texture in [0, 1], shape (H, W, 3): smooth noise, stripes, checker or a gradient."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    colour_a, colour_b = _random_colour(rng), _random_colour(rng)
    kind = rng.choice(["noise", "stripes", "checker", "gradient"])
    if kind == "noise":
        texture = _smooth_noise(rng, height, width, cells=int(rng.integers(3, 9)))
    else:
        if kind == "stripes":
            period = rng.uniform(6, 20)
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        elif kind == "checker":
            cell = rng.uniform(5, 16)
            across = -x * np.sin(angle) + y * np.cos(angle)
            weight = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
        else:
            weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        texture = colour_a + weight[..., None] * (colour_b - colour_a)
    # Low-frequency shading and sensor noise, so no region has one exact colour.
    shading = 0.75 + 0.5 * _smooth_noise(rng, height, width, cells=3, channels=1)
    texture = texture * shading + rng.normal(0, 0.015, size=(height, width, 3))
    return np.clip(texture, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- shapes as signed distance fields


def _rotated(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Object-local coordinates: centred on (cx, cy), rotated by -angle."""
    c, s = np.cos(angle), np.sin(angle)
    return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


def _sdf_rounded_rect(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float, radius: float) -> np.ndarray:
    radius = min(radius, half_w, half_h)
    qx, qy = np.abs(u) - half_w + radius, np.abs(v) - half_h + radius
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _sdf_ellipse(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    # Approximate distance: exact on the axes, good enough for rims a few pixels wide.
    return (np.hypot(u / half_w, v / half_h) - 1.0) * min(half_w, half_h)


def _sdf_bottle(u: np.ndarray, v: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Body, rounded shoulders and a narrow neck, standing upright in local coordinates (v grows downwards)."""
    body = _sdf_rounded_rect(u, v - 0.25 * half_h, half_w, 0.75 * half_h, 0.3 * half_w)
    shoulders = _sdf_ellipse(u, v + 0.4 * half_h, half_w, 0.35 * half_h)
    neck = _sdf_rounded_rect(u, v + 0.75 * half_h, 0.35 * half_w, 0.25 * half_h, 0.15 * half_w)
    return np.minimum(np.minimum(body, shoulders), neck)


def _thing_sdf(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size_fraction: tuple[float, float]
) -> tuple[np.ndarray, float, float]:
    """A random ellipse, rounded rectangle or bottle inside the image; returns (sdf, centre x, centre y)."""
    height, width = x.shape
    side = min(height, width)
    half_w = side * rng.uniform(*size_fraction)
    half_h = half_w * rng.uniform(0.6, 1.6)
    margin = 0.6 * min(half_w, half_h)  # mostly inside the frame, sometimes slightly cut
    cx = rng.uniform(margin, width - margin)
    cy = rng.uniform(margin, height - margin)
    kind = rng.choice(["ellipse", "rounded_rect", "bottle"])
    if kind == "bottle":
        half_h = max(half_h, 1.3 * half_w)  # bottles are tall
        angle = rng.uniform(-0.35, 0.35)
    else:
        angle = rng.uniform(0, np.pi)
    u, v = _rotated(x, y, cx, cy, angle)
    if kind == "ellipse":
        return _sdf_ellipse(u, v, half_w, half_h), cx, cy
    if kind == "rounded_rect":
        return _sdf_rounded_rect(u, v, half_w, half_h, rng.uniform(0.1, 0.5) * min(half_w, half_h)), cx, cy
    return _sdf_bottle(u, v, half_w, half_h), cx, cy


def _stuff_sdf(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A window pane: a large axis-aligned rectangle that runs off one image border."""
    height, width = x.shape
    side = rng.integers(0, 4)  # 0 left, 1 right, 2 top, 3 bottom
    # Along the border the pane starts anywhere from just outside the image to its middle and spans 40-120 %.
    start, span = rng.uniform(-0.2, 0.5), rng.uniform(0.4, 1.2)
    if side < 2:
        depth = width * rng.uniform(0.3, 0.6)
        top, bottom = start * height, (start + span) * height
        left, right = (-10.0, depth) if side == 0 else (width - depth, width + 10.0)
    else:
        depth = height * rng.uniform(0.3, 0.6)
        left, right = start * width, (start + span) * width
        top, bottom = (-10.0, depth) if side == 2 else (height - depth, height + 10.0)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    sdf = _sdf_rounded_rect(x - cx, y - cy, (right - left) / 2, (bottom - top) / 2, 1.0)
    return sdf, float(np.clip(cx, 0, width - 1)), float(np.clip(cy, 0, height - 1))


# ---------------------------------------------------------------- rendering


def _sample_bilinear(image: np.ndarray, src_x: np.ndarray, src_y: np.ndarray) -> np.ndarray:
    """image (H, W, 3) read at float coordinates, clamped to the border."""
    height, width = image.shape[:2]
    src_x = np.clip(src_x, 0, width - 1.001)
    src_y = np.clip(src_y, 0, height - 1.001)
    x0, y0 = src_x.astype(np.int64), src_y.astype(np.int64)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _render_glass(
    rng: np.random.Generator,
    canvas: np.ndarray,
    sdf: np.ndarray,
    centre: tuple[float, float],
    difficulty: Difficulty,
    is_stuff: bool,
) -> np.ndarray:
    """Draw one glass object over canvas: refracted background, tint, rim and a specular highlight."""
    # Only pixels near or inside the outline change: work on their bounding box (rendering dominates the run time).
    rows, cols = np.nonzero(sdf < 2.0)
    if rows.size == 0:
        return canvas
    height, width = sdf.shape
    top, bottom = max(rows.min() - 1, 0), min(rows.max() + 2, height)
    left, right = max(cols.min() - 1, 0), min(cols.max() + 2, width)
    sdf = sdf[top:bottom, left:right]
    y, x = np.mgrid[top:bottom, left:right].astype(np.float32)
    cx, cy = centre
    rim_width = rng.uniform(2.0, 4.0)
    depth = np.clip(-sdf / rim_width, 0, 1)  # 0 at the outline, 1 deeper than one rim width

    # Refraction: a lens-like magnification about the centre (flat panes: much weaker) ...
    offset = rng.uniform(*difficulty.lens_scale_offset) * (0.3 if is_stuff else 1.0)
    scale = 1 - offset if rng.random() < 0.5 else 1 + offset
    src_x, src_y = cx + (x - cx) * scale, cy + (y - cy) * scale
    # ... plus a push along the outline normal that is strongest at the rim, like thick glass edges.
    grad_y, grad_x = np.gradient(sdf)
    norm = np.hypot(grad_x, grad_y) + 1e-6
    push = rng.uniform(*difficulty.rim_displacement) * (1 - depth) ** 2
    src_x, src_y = src_x + push * grad_x / norm, src_y + push * grad_y / norm
    # ... and a gentle wobble, so the displacement is not a pure zoom.
    wobble_period = rng.uniform(10, 30)
    wobble = rng.uniform(0.3, 1.2) * np.sin(2 * np.pi * y / wobble_period + rng.uniform(0, 2 * np.pi))
    glass = _sample_bilinear(canvas, src_x + wobble, src_y)

    tint = rng.uniform(0.5, 1.0, size=3)
    glass = glass * (1 - rng.uniform(*difficulty.tint_strength) * (1 - tint))

    edge = np.exp(-((sdf / rng.uniform(*difficulty.edge_width)) ** 2))
    glass = glass + rng.choice([-1.0, 1.0]) * rng.uniform(*difficulty.edge_strength) * edge[..., None]

    # Specular highlight: an elongated bright blob near the centre, mostly up-left of it (stuff: a diagonal sheen).
    if is_stuff:
        sheen_period = rng.uniform(15, 40)
        highlight = np.maximum(np.sin(2 * np.pi * (x + y) / sheen_period), 0) ** 8
    else:
        hx, hy = cx + rng.uniform(-0.3, 0.1) * rim_width * 3, cy + rng.uniform(-0.3, 0.1) * rim_width * 3
        u, v = _rotated(x, y, hx, hy, rng.uniform(0, np.pi))
        highlight = np.exp(-((u / rng.uniform(1.5, 4.0)) ** 2 + (v / rng.uniform(0.8, 1.5)) ** 2))
    glass = glass + rng.uniform(*difficulty.highlight_strength) * (highlight * depth)[..., None]

    coverage = np.clip(0.5 - sdf, 0, 1)[..., None]  # anti-aliased outline
    canvas = canvas.copy()
    region = canvas[top:bottom, left:right]
    canvas[top:bottom, left:right] = np.clip(region * (1 - coverage) + glass * coverage, 0, 1)
    return canvas


def _draw_frame(canvas: np.ndarray, sdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An opaque window frame just outside the pane: frames are not transparent, so they stay background."""
    frame = (sdf >= 0) & (sdf < rng.uniform(1.5, 3.5))
    canvas = canvas.copy()
    canvas[frame] = rng.uniform(0.05, 0.95, size=3) * rng.uniform(0.9, 1.0)
    return canvas


def render_scene(rng: np.random.Generator, difficulty: Difficulty) -> tuple[np.ndarray, np.ndarray]:
    """One random scene: (RGB uint8 image (H, W, 3), uint8 mask (H, W) with values in {0, 85, 255})."""
    width = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    canvas = _background(rng, height, width)
    mask = np.full((height, width), BACKGROUND_GREY, dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)

    if rng.random() >= EMPTY_SCENE_PROBABILITY:
        # Stuff first: things stand in front of windows, so they overwrite them in the mask.
        if rng.random() < difficulty.stuff_probability:
            sdf, cx, cy = _stuff_sdf(rng, x, y)
            canvas = _draw_frame(canvas, sdf, rng)
            canvas = _render_glass(rng, canvas, sdf, (cx, cy), difficulty, is_stuff=True)
            mask[sdf < 0] = STUFF_GREY
        for _ in range(int(rng.integers(difficulty.num_things[0], difficulty.num_things[1] + 1))):
            sdf, cx, cy = _thing_sdf(rng, x, y, difficulty.size_fraction)
            canvas = _render_glass(rng, canvas, sdf, (cx, cy), difficulty, is_stuff=False)
            mask[sdf < 0] = THINGS_GREY

    image = np.round(canvas * 255).astype(np.uint8)
    return image, mask


# ---------------------------------------------------------------- writing the folder tree


def _scene_rng(seed: int, split: str, subset: str | None, index: int) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process, which would break reproducibility.
    tag = zlib.crc32(f"{split}/{subset}".encode())
    return np.random.default_rng([seed, tag, index])


def make_split_dir(root: str | Path, split: str, subset: str | None) -> Path:
    """The folder of one split (subset None: the flat train split) where dataset.trans10k looks for it, with its
    images/ and masks/ folders created (empty until write_pair fills them)."""
    [(_, folder)] = split_folders(root, split, () if subset is None else (subset,))
    for name in ("images", "masks"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return folder


def write_pair(folder: Path, stem: str, image: Image.Image, mask: Image.Image, quality: int = JPEG_QUALITY) -> None:
    """One pair in the Trans10k layout: folder/images/<stem>.jpg and folder/masks/<stem>_mask.png."""
    image.save(folder / "images" / f"{stem}.jpg", quality=quality)
    mask.save(folder / "masks" / f"{stem}{MASK_SUFFIX}")


def write_scene(
    folder: Path,
    stem: str,
    rng: np.random.Generator,
    difficulty: Difficulty,
    size: tuple[int, int] | None = None,
    quality: int = JPEG_QUALITY,
) -> None:
    """A render_scene pair, resized to ``size`` = (width, height) if given (image bicubic, mask nearest: the mask
    keeps its exact values), written with write_pair."""
    image, mask = (Image.fromarray(array) for array in render_scene(rng, difficulty))
    if size is not None:
        image, mask = image.resize(size, Image.BICUBIC), mask.resize(size, Image.NEAREST)
    write_pair(folder, stem, image, mask, quality)


def write_split(root: Path, split: str, subset: str | None, count: int, seed: int) -> None:
    """Write `count` scenes of one split/subset as <stem>.jpg + <stem>_mask.png."""
    folder = make_split_dir(root, split, subset)
    for index in range(count):
        rng = _scene_rng(seed, split, subset, index)
        difficulty = DIFFICULTY_OF_SUBSET[subset]
        if subset is None and rng.random() < TRAIN_HARD_FRACTION:
            difficulty = HARD
        write_scene(folder, f"{index:04d}", rng, difficulty)


def resolve_counts(counts: dict | None = None) -> dict[tuple[str, str | None], int]:
    """DEFAULT_COUNTS overridden by counts, whose keys are (split, subset) tuples or "train" / "test/hard" strings."""
    resolved = dict(DEFAULT_COUNTS)
    for key, count in (counts or {}).items():
        if isinstance(key, str):
            split, _, subset = key.partition("/")
            key = (split, subset or None)
        if key not in DEFAULT_COUNTS:
            raise ValueError(f"unknown split {key!r}; known: {list(DEFAULT_COUNTS)}")
        if int(count) < 0:
            raise ValueError(f"negative count {count} for {key!r}")
        resolved[key] = int(count)
    return resolved


def write_synthetic_trans10k(root: str | Path, seed: int = 0, counts: dict | None = None) -> None:
    """Write a synthetic Trans10k tree under root.

    counts overrides DEFAULT_COUNTS per split, e.g. {"train": 8, "test/hard": 3} or {("train", None): 8}; a count of
    0 still creates the (empty) folders, so the layout is always complete.
    """
    root = Path(root)
    for (split, subset), count in resolve_counts(counts).items():
        write_split(root, split, subset, count, seed)
