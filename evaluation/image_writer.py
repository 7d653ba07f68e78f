"""PNG output off the critical path, the raw <-> PNG conversion, and the error panel renderer.

Raw predictions are stored as 8-bit grayscale PNGs, value = round(255 * raw), and read back as value / 255, so the
round trip moves a value by at most 1/510. The 0.5 threshold falls between PNG values 127 and 128.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from PIL import Image

from evaluation.metrics import check_raw_range
from utils.atomic import atomic_path

logger = logging.getLogger(__name__)

# Panel colours (RGB) for the binary prediction against the GT.
TRUE_POSITIVE = (255, 255, 255)
TRUE_NEGATIVE = (0, 0, 0)
FALSE_POSITIVE = (255, 0, 0)
FALSE_NEGATIVE = (0, 0, 255)
PANEL_GAP_COLOUR = (128, 128, 128)


# Fast lossless PNG (bench/mask_writing.py, docs/benchmarks.md). Pillow's encoder is slow even with compression off
# (level 0); encode_png uses the "Sub" filter for every row (one numpy subtraction) and zlib level 1 with
# run-length matching, which writes a 1024x768 mask or raw prediction in <= 10 ms of CPU instead of 7-80 ms at Pillow's
# level 6, at up to ~1.7x the file size. The decoded pixels and mode are the same. PIL images of other modes go
# through Pillow with the fastest of its settings.
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)
_PNG_FILTER_SUB = 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W], [H, W, 3] or [H, W, 4] -> 8-bit grey / RGB / RGBA PNG bytes (Sub filter, zlib level 1, Z_RLE)."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    scanlines = np.empty((height, width * channels + 1), dtype=np.uint8)
    scanlines[:, 0] = _PNG_FILTER_SUB
    scanlines[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=scanlines[:, channels + 1 :])  # wraps mod 256, as PNG
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(scanlines.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


class ImageWriteError(RuntimeError):
    """One or more background PNG writes failed; ``__cause__`` is the first failure."""


def _save_png(path: Path, image: np.ndarray | Image.Image) -> None:
    """Atomic: an interrupted run never leaves a truncated PNG."""
    with atomic_path(path) as tmp:
        if isinstance(image, np.ndarray):
            tmp.write_bytes(encode_png(image))
        else:
            image.save(tmp, format="PNG", **PNG_OPTIONS)


def _to_pixels(image: np.ndarray | Image.Image) -> np.ndarray | Image.Image:
    """Copy the pixels now, so the caller may reuse or mutate its buffer while the write is pending; 8-bit grey,
    RGB and RGBA become arrays for encode_png, other PIL modes stay PIL images."""
    if isinstance(image, Image.Image):
        return np.array(image) if image.mode in ("L", "RGB", "RGBA") else image.copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"expected a uint8 array HxW, HxWx3 or HxWx4, got {image.dtype} {image.shape}")
        return np.array(image, copy=True)
    raise TypeError(f"expected a numpy uint8 array or a PIL image, got {type(image).__name__}")


class BackgroundImageWriter:
    """Writes PNGs on worker threads so the accelerator never waits for PNG encoding.

    ``submit`` blocks once ``max_pending`` writes are queued or running, so memory stays bounded when the
    disk is slower than the model. A failed write is never lost: the next ``submit`` raises ImageWriteError,
    and so does ``close()`` (or leaving the ``with`` block). Use as a context manager.
    """

    def __init__(self, max_workers: int = 2, max_pending: int = 32) -> None:
        if max_workers < 1 or max_pending < 1:
            raise ValueError(f"max_workers and max_pending must be >= 1, got {max_workers}, {max_pending}")
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="png-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._failures: list[tuple[Path, BaseException]] = []
        self._closed = False
        self.num_written = 0

    def submit(self, path: str | Path, image: np.ndarray | Image.Image) -> None:
        """Queue ``image`` (uint8 HxW / HxWx3 / HxWx4 array, or PIL image) to be written as PNG at ``path``."""
        if self._closed:
            raise RuntimeError("BackgroundImageWriter is closed")
        self._raise_if_failed()
        pixels = _to_pixels(image)
        path = Path(path)
        self._slots.acquire()  # blocks while max_pending writes are in flight
        try:
            future = self._executor.submit(_save_png, path, pixels)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda done: self._on_done(path, done))

    def _on_done(self, path: Path, future: Future) -> None:
        error = future.exception()
        with self._lock:
            if error is None:
                self.num_written += 1
            else:
                self._failures.append((path, error))
        self._slots.release()  # after recording, so a submit it unblocks already sees the failure

    def _failure_error(self) -> ImageWriteError | None:
        with self._lock:
            if not self._failures:
                return None
            path, first = self._failures[0]
            count = len(self._failures)
        error = ImageWriteError(f"{count} PNG write(s) failed; first: {path}: {type(first).__name__}: {first}")
        error.__cause__ = first
        return error

    def _raise_if_failed(self) -> None:
        error = self._failure_error()
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for every pending write; raise ImageWriteError if any write failed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._raise_if_failed()

    def __enter__(self) -> BackgroundImageWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # Another exception is already propagating: still wait for the writes, but log failures instead of
        # replacing that exception (it may well be the ImageWriteError raised by submit).
        try:
            self.close()
        except ImageWriteError as error:
            if error is not exc and not isinstance(exc, ImageWriteError):
                logger.error("%s", error)


def raw_to_png_array(raw: torch.Tensor) -> np.ndarray:
    """[H, W] (or [1, H, W]) prediction in [0, 1] -> uint8 [H, W] array, value = round(255 * raw).

    Converted on raw's device, so only one byte per pixel crosses to the host.
    """
    if raw.dim() == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.dim() != 2:
        raise ValueError(f"raw must be [H, W] or [1, H, W], got shape {tuple(raw.shape)}")
    values = raw.detach().float()
    check_raw_range(values)
    return torch.round(values * 255.0).to(torch.uint8).cpu().numpy()


def png_to_raw(path: str | Path) -> torch.Tensor:
    """8-bit grayscale PNG -> float32 [H, W] in [0, 1] (value / 255).

    Only mode "L" is accepted: 16-bit ("I;16"), palette, RGB and 1-bit files are refused rather than silently
    rescaled, since a different bit depth would move the threshold boundary.
    """
    with Image.open(path) as image:
        if image.mode != "L":
            raise ValueError(f"{path}: expected an 8-bit grayscale (mode L) PNG, got mode {image.mode}")
        values = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(values.astype(np.float32) / 255.0)


def _image_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be a uint8 HxWx3 array or a PIL image, got {array.dtype} {array.shape}")
    return array


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _error_map(predicted: np.ndarray, gt: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*gt.shape, 3), dtype=np.uint8)  # true negatives stay TRUE_NEGATIVE (black)
    rgb[predicted & gt] = TRUE_POSITIVE
    rgb[predicted & ~gt] = FALSE_POSITIVE
    rgb[~predicted & gt] = FALSE_NEGATIVE
    return rgb


def render_panel(
    image: np.ndarray | Image.Image, raw: torch.Tensor, gt_binary: torch.Tensor, threshold: float = 0.5, gap: int = 4
) -> Image.Image:
    """Side by side, all at the GT's size: image | raw (grey) | prediction vs GT | GT.

    The third tile shows the binary prediction ``raw >= threshold``: true positives white, true negatives black,
    false positives red, false negatives blue. ``gap`` grey pixels separate the tiles.
    """
    rgb = _image_array(image)
    raw_grey = raw_to_png_array(raw)
    gt = (gt_binary.detach().cpu() != 0).numpy()
    if gt.ndim == 3 and gt.shape[0] == 1:
        gt = gt[0]
    if not (rgb.shape[:2] == raw_grey.shape == gt.shape):
        raise ValueError(
            f"panel inputs differ in size: image {rgb.shape[:2]}, raw {raw_grey.shape}, gt {gt.shape}; "
            "resize the prediction to the GT size first (dataset.transforms.resize_raw)"
        )
    # Threshold the float values, not the PNG bytes, so the panel agrees with score_image.
    predicted = (raw.detach().cpu().to(torch.float64).reshape(gt.shape) >= threshold).numpy()
    tiles = [rgb, _grey_to_rgb(raw_grey), _error_map(predicted, gt), _grey_to_rgb(gt.astype(np.uint8) * 255)]
    height, width = gt.shape
    panel = np.empty((height, 4 * width + 3 * gap, 3), dtype=np.uint8)
    panel[:] = PANEL_GAP_COLOUR
    for index, tile in enumerate(tiles):
        left = index * (width + gap)
        panel[:, left : left + width] = tile
    return Image.fromarray(panel)
