"""Image and mask operations for Trans10k: EXIF orientation, mask decoding, the joint training transforms, the
canvas geometry of the two processings, the conversions between images and model tensors, and the resize of raw
predictions back to an image's size.

Everything here works on already opened PIL images, arrays and tensors; opening files and turning read errors into
``DatasetError`` happens in ``dataset.trans10k``.

torchvision.transforms.v2 would be the natural choice for the joint image+mask transforms (it transforms an image
and a ``Mask`` together), but it is not installable next to the CPU torch wheel this project develops with (the
only torchvision wheels at hand are CUDA builds that fail to import beside it), so the few transforms needed are
written here with PIL, numpy and torch.
All randomness comes from a ``torch.Generator`` passed in by the caller, never from global random state.

Mask semantics (official Trans10k PNGs): background 0, things 85, stuff 255, stored as grey values in L or RGB(A)
PNGs; P-mode masks are read through their palette colours. The "grey level" of a mask pixel is its largest channel,
so a pixel is transparent exactly when any channel is non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageChops, ImageEnhance, ImageOps

# Grey levels of the official masks (*_GREY) and the class ids grey_to_classes maps them to (*_CLASS). The dataset
# authors' loader maps 85 -> 1 and 255 -> 2 with class names ('background', 'things', 'stuff'):
# xieenze/Segment_Transparent_Objects, segmentron/data/dataloader/trans10k.py; TransLab and Trans2Seg use 0/1/2 too.
BACKGROUND_GREY = 0
THINGS_GREY = 85
STUFF_GREY = 255
BACKGROUND_CLASS = 0
THINGS_CLASS = 1
STUFF_CLASS = 2
# Any other non-zero grey level (anti-aliasing, re-saved masks) goes to the nearer official level: 1..169 -> things,
# 170..255 -> stuff. It is still transparent in the binary target, so no pixel is dropped or raises.
_THINGS_STUFF_BOUNDARY = (THINGS_GREY + STUFF_GREY + 1) // 2

IMAGE_RESAMPLE = Image.Resampling.BICUBIC
# Masks are resized with NEAREST: every output pixel keeps an exact source value (0, 85 or 255), so there is no
# blurred edge to re-binarise and no threshold to choose.
MASK_RESAMPLE = Image.Resampling.NEAREST
MASK_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")

# Crops keep their width/height ratio in [3/4, 4/3], the usual RandomResizedCrop range: the crop is then resized to
# a square, and a 4:3 photo resized whole (random_crop_scale 1.0) is distorted by the same bound.
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10

Size = tuple[int, int]  # (width, height), PIL order
CropBox = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, PIL order

# EXIF orientations 5..8 rotate by 90 degrees, so the upright image has width and height swapped.
_ORIENTATIONS_SWAPPING_WH = (5, 6, 7, 8)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright) read from the header; no pixel data is decoded."""
    return int(image.getexif().get(ExifTags.Base.Orientation, 1))


def upright_size(image: Image.Image) -> Size:
    """(width, height) the image has once its EXIF orientation is applied, from the header alone."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _ORIENTATIONS_SWAPPING_WH else (width, height)


def draft_jpeg(image: Image.Image, min_upright_size: Size) -> int:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while staying at least ``min_upright_size``; returns the factor.

    Must run before any pixel is decoded. ``image.size`` changes to the reduced size, so callers read the original
    size first. Non-JPEG images are left alone (factor 1).
    """
    if image.format != "JPEG":
        return 1
    min_width, min_height = min_upright_size
    if exif_orientation(image) in _ORIENTATIONS_SWAPPING_WH:  # draft works on the stored, not the upright, pixels
        min_width, min_height = min_height, min_width
    original_width = image.size[0]
    result = image.draft("RGB", (max(1, min_width), max(1, min_height)))
    if result is None:
        return 1
    _, box_in_draft = result  # the original image's extent in draft pixels: (0, 0, W / factor, H / factor)
    return round(original_width / box_in_draft[2])


def to_upright_rgb(image: Image.Image) -> Image.Image:
    """Decode, apply the EXIF orientation and convert to RGB (grey, CMYK, palette and alpha images included)."""
    return ImageOps.exif_transpose(image).convert("RGB")


# Grey modes with more than 8 bits per pixel. Pillow's convert("RGB") clips them at 255 instead of scaling: a 16-bit
# 0..65535 gradient becomes 98% white and a 0..1 float image 98% black, so they are scaled by upright_8bit first.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def upright_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as an upright mode-L image over its full range; other modes as is.

    16-bit (I;16*) and integer (I) values in 0..65535 map to round(value / 257); float (F) values in [0, 1] to
    round(255 * value). Other ranges have no known full scale and raise ValueError with the range found. The EXIF
    orientation is applied here because the scaled copy carries no EXIF; to_upright_rgb then finishes the job.
    """
    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image
    values = np.asarray(ImageOps.exif_transpose(image), dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not (np.isfinite(values).all() and 0.0 <= low and high <= 1.0):
            raise ValueError(
                f"float image (mode F) with values in [{low:g}, {high:g}], not [0, 1]: its brightness scale is "
                "unknown; save it as 8- or 16-bit, or as float in [0, 1]"
            )
        scaled = values * 255.0
    else:
        if not (0.0 <= low and high <= 65535.0):
            raise ValueError(
                f"{image.mode} image with values in [{low:g}, {high:g}], beyond 16 bits (0..65535): its brightness "
                "scale is unknown; save it as 8- or 16-bit"
            )
        scaled = values / 257.0
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def check_mask_mode(mode: str) -> None:
    """Raise ValueError for modes that are not 8-bit grey, palette or RGB(A) (e.g. 16-bit or float masks)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unsupported mask mode {mode!r}; expected one of {', '.join(MASK_MODES)}")


def mask_grey_level(mask: Image.Image) -> Image.Image:
    """Upright mode-L image holding each pixel's grey level: the largest channel of its colour.

    P masks go through their palette (a non-zero index may well map to black), so the colour decides, not the index.
    """
    check_mask_mode(mask.mode)
    mask = ImageOps.exif_transpose(mask)
    if mask.mode in ("1", "L", "LA"):  # a 1-bit mask has no classes: its set pixels read as 255
        return mask.convert("L") if mask.mode == "1" else mask.getchannel(0)
    red, green, blue = mask.convert("RGB").split()
    return ImageChops.lighter(red, ImageChops.lighter(green, blue))


def grey_to_classes(grey: np.ndarray) -> np.ndarray:
    """uint8 class map from grey levels: 0 -> BACKGROUND_CLASS, nearer 85 -> THINGS_CLASS, nearer 255 -> STUFF_CLASS.

    The binary target is simply ``grey > 0``: every non-zero level is transparent.
    """
    classes = np.full(grey.shape, BACKGROUND_CLASS, dtype=np.uint8)
    classes[(grey > BACKGROUND_GREY) & (grey < _THINGS_STUFF_BOUNDARY)] = THINGS_CLASS
    classes[grey >= _THINGS_STUFF_BOUNDARY] = STUFF_CLASS
    return classes


# image_to_tensor and binary_to_tensor do their arithmetic in numpy, which is single-threaded: torch's intra-op
# threads would compete with DataLoader workers and the training loop (measured: up to 4x slower per item on a busy
# 2-core box).


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 [3, H, W] in [-1, 1] from an RGB image."""
    channels_first = np.ascontiguousarray(np.array(image, dtype=np.uint8).transpose(2, 0, 1))
    pixels = channels_first.astype(np.float32)
    pixels /= 127.5
    pixels -= 1.0
    return torch.from_numpy(pixels)


def binary_to_tensor(binary: np.ndarray) -> torch.Tensor:
    """float32 [3, H, W]: -1 background, +1 transparent, repeated to 3 channels like an image for the VAE."""
    signed = np.where(binary, np.float32(1.0), np.float32(-1.0))
    return torch.from_numpy(np.repeat(signed[np.newaxis], 3, axis=0))


# ---------------------------------------------------------------------------------------------------------------------
# The mask image the VAE encodes (config key mask_classes), and the rule that reads a decoded one back
#
# Both encodings are grey images (the three channels equal), read through their level m = the channel mean mapped to
# [0, 1]:
# binary: background m = 0 (black), transparent m = 1 (white); the raw mask is m.
# things_stuff: background m = 0, things m = 1/2 (mid grey), stuff m = 1 (white): Trans10k's own three-level mask
#   (0 / 85 / 255) with the levels spread evenly. Decoded: raw = min(1, 2m), the probability of transparent (so
#   raw >= 0.5 is m >= 1/4, halfway between background and things, and every binary metric works as in binary mode);
#   stuff share = clip(2m - 1, 0, 1); a pixel is background when raw < threshold, else stuff when the stuff share is
#   above 1/2 (m > 3/4, halfway between things and stuff), else things.
# Why levels and not colours (things and stuff in different channels): the demo's tiny VAE reconstructs only greys.
# Measured on the demo test split (121 images, 64 px, VAE round trip, nearest-code decoding): levels things IoU 0.914 /
# stuff 0.920; colour channels (R transparent, G things, B stuff) 0.349 / 0.202. SD3.5's VAE is not measured here.
MASK_CLASSES = ("binary", "things_stuff")  # config.yaml's (choices: ...) of `mask_classes`
_THINGS_STUFF_LEVELS = (-1.0, 0.0, 1.0)  # things_stuff: the pixel value of class 0 / 1 / 2
TARGET_CHANNELS = {"binary": 1, "things_stuff": 2}  # target_channels' C per encoding


def check_mask_classes(mask_classes: str) -> None:
    if mask_classes not in MASK_CLASSES:
        raise ValueError(f"mask_classes must be one of {', '.join(MASK_CLASSES)}, got {mask_classes!r}")


def mask_to_tensor(grey: np.ndarray, mask_classes: str) -> torch.Tensor:
    """float32 [3, H, W] in [-1, 1]: the mask image the VAE encodes, from grey levels (0 / 85 / 255)."""
    check_mask_classes(mask_classes)
    if mask_classes == "binary":
        return binary_to_tensor(grey > 0)
    level = np.array(_THINGS_STUFF_LEVELS, np.float32)[grey_to_classes(grey)]
    return torch.from_numpy(np.repeat(level[np.newaxis], 3, axis=0))


def target_channels(mask_values: torch.Tensor, mask_classes: str) -> torch.Tensor:
    """bool [B, C, H, W] the pixel loss compares with, from mask images [B, 3, H, W]: transparent (C = 1) for binary,
    transparent and stuff (C = 2) for things_stuff."""
    check_mask_classes(mask_classes)
    level = (mask_values[:, :1] + 1) / 2  # m: 0, 1/2 or 1
    if mask_classes == "binary":
        return level > 0.25
    return torch.cat([level > 0.25, level > 0.75], dim=1)


def loss_channels(decoded: torch.Tensor, mask_classes: str) -> torch.Tensor:
    """Decoded mask images [B, 3, H, W] in about [0, 1] -> the channels target_channels describes, unclamped: m for
    binary; (2m, 2m - 1) for things_stuff, the two planes of mask_planes before their clip (a things pixel is right
    at m = 1/2, where both are on the right side of 0 and 1)."""
    check_mask_classes(mask_classes)
    level = decoded.mean(dim=1, keepdim=True)
    return level if mask_classes == "binary" else torch.cat([2 * level, 2 * level - 1], dim=1)


def mask_planes(decoded: torch.Tensor, mask_classes: str) -> torch.Tensor:
    """Decoded mask images [B, 3, H, W] in [0, 1] -> prediction planes [B, P, H, W] in [0, 1]: P = 1 (raw) for
    binary, P = 2 (raw, stuff share) for things_stuff. Planes, unlike classes, can be averaged (flip ensembling)
    and resized bilinearly like the raw mask; classes are read from them last (planes_to_classes)."""
    return loss_channels(decoded, mask_classes).clamp(0, 1)


def planes_to_classes(raw: torch.Tensor, stuff_share: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 class map [H, W] (0 background, 1 things, 2 stuff) from the two things_stuff planes, by the rule above."""
    classes = torch.where(stuff_share > 0.5, STUFF_CLASS, THINGS_CLASS).to(torch.uint8)
    return torch.where(raw >= threshold, classes, torch.zeros_like(classes))  # binary prediction: raw >= threshold


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_crop_box(size: Size, min_area_fraction: float, generator: torch.Generator) -> CropBox:
    """Random resized crop box: area fraction in [min_area_fraction, 1], width/height ratio in CROP_ASPECT_RANGE.

    min_area_fraction 1.0 returns the whole image (resized as is, whatever its aspect ratio). When no sampled box
    fits (after a few tries), falls back to the largest centred box whose ratio is within the range.
    """
    width, height = size
    if min_area_fraction >= 1.0:
        return (0.0, 0.0, float(width), float(height))
    log_low, log_high = math.log(CROP_ASPECT_RANGE[0]), math.log(CROP_ASPECT_RANGE[1])
    for _ in range(_CROP_ATTEMPTS):
        area = width * height * _uniform(generator, min_area_fraction, 1.0)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        crop_width, crop_height = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if crop_width <= width and crop_height <= height:
            left = _uniform(generator, 0.0, width - crop_width)
            top = _uniform(generator, 0.0, height - crop_height)
            return (left, top, left + crop_width, top + crop_height)
    aspect = min(max(width / height, CROP_ASPECT_RANGE[0]), CROP_ASPECT_RANGE[1])
    crop_width, crop_height = min(width, height * aspect), min(height, width / aspect)
    left, top = (width - crop_width) / 2, (height - crop_height) / 2
    return (left, top, left + crop_width, top + crop_height)


@dataclass(frozen=True)
class JitterFactors:
    """Multiplicative factors as in PIL's ImageEnhance: 1.0 leaves the image unchanged."""

    brightness: float
    contrast: float
    saturation: float


def sample_jitter_factors(strength: float, generator: torch.Generator) -> JitterFactors:
    """Brightness, contrast and saturation factors, each uniform in [1 - strength, 1 + strength]."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    return JitterFactors(*(_uniform(generator, low, high) for _ in range(3)))


def color_jitter(image: Image.Image, factors: JitterFactors) -> Image.Image:
    """Apply brightness, then contrast, then saturation (a fixed order: simpler than torchvision's random one)."""
    image = ImageEnhance.Brightness(image).enhance(factors.brightness)
    image = ImageEnhance.Contrast(image).enhance(factors.contrast)
    return ImageEnhance.Color(image).enhance(factors.saturation)


@dataclass(frozen=True)
class TrainAugmentation:
    """The random choices for one training sample, drawn before any pixel is decoded."""

    crop_box: CropBox  # in upright, full-size image pixels
    flip: bool
    jitter: JitterFactors | None


def sample_train_augmentation(
    image_size: Size,
    generator: torch.Generator,
    random_flip: bool,
    color_jitter_strength: float,
    random_crop_scale: float,
) -> TrainAugmentation:
    """Draw crop, flip and jitter from ``generator`` in a fixed order, so a seed always gives the same result."""
    crop_box = sample_crop_box(image_size, random_crop_scale, generator)
    flip = random_flip and bool(torch.rand((), generator=generator) < 0.5)
    jitter = sample_jitter_factors(color_jitter_strength, generator) if color_jitter_strength > 0 else None
    return TrainAugmentation(crop_box=crop_box, flip=flip, jitter=jitter)


def min_decode_size(image_size: Size, crop_box: CropBox, output_size: Size) -> Size:
    """Smallest full-image size at which ``crop_box`` still covers ``output_size`` pixels (for draft_jpeg)."""
    left, top, right, bottom = crop_box
    width, height = image_size
    out_width, out_height = output_size
    return (math.ceil(width * out_width / (right - left)), math.ceil(height * out_height / (bottom - top)))


def scale_box(box: CropBox, factor: float) -> CropBox:
    """Box coordinates divided by ``factor`` (e.g. full-size pixels -> JPEG draft pixels)."""
    return (box[0] / factor, box[1] / factor, box[2] / factor, box[3] / factor)


def augment_pair(
    image: Image.Image,
    mask_grey: Image.Image,
    augmentation: TrainAugmentation,
    image_draft_factor: int,
    size: Size,
) -> tuple[Image.Image, Image.Image]:
    """Crop and resize both to ``size`` (width, height), flip both together, colour-jitter the image only.

    ``image`` may be a JPEG decoded at 1/``image_draft_factor`` scale; ``mask_grey`` is at full size. Nothing here
    pads: under keep_aspect the canvas is filled afterwards (``place_in_canvas``), so a flip never moves the padding.
    """
    image_box = scale_box(augmentation.crop_box, image_draft_factor)
    image = image.resize(size, IMAGE_RESAMPLE, box=image_box)
    mask_grey = mask_grey.resize(size, MASK_RESAMPLE, box=augmentation.crop_box)
    if augmentation.flip:
        image, mask_grey = ImageOps.mirror(image), ImageOps.mirror(mask_grey)
    if augmentation.jitter is not None:
        image = color_jitter(image, augmentation.jitter)
    return image, mask_grey


# ---------------------------------------------------------------------------------------------------------------------
# Canvas geometry: how an image of any size becomes the model's resolution x resolution input, and back.
#
# square:      the whole image is resized to resolution x resolution (aspect ratio not kept: the seed's processing).
# keep_aspect: the longest side is resized to resolution and the short side to round(short * resolution / long),
#              rounded half up, at least 1 px; the result sits in the TOP-LEFT corner of a resolution x resolution
#              canvas (a multiple of 16, so a batch stacks), the padding to its right and below it. Top-left makes the
#              content box [0:h, 0:w]: undoing the padding is one slice, with no offset to round or carry. The padding
#              repeats the content's last column and row (edge replication, as Marigold pads): a constant fill would
#              put a hard artificial edge at the content border, the kind of contour the model learns to call glass,
#              and the mask is padded the same way so input and target agree there. The padding is excluded from
#              the losses (``valid_mask``) and cropped from every prediction (``crop_to_content``), so what fills it
#              only matters through the receptive field of the content pixels next to it.

PROCESSINGS = ("square", "keep_aspect")
ContentSize = tuple[int, int]  # (height, width) of the image inside the canvas: tensor order, like gt.shape


def check_processing(processing: str) -> None:
    if processing not in PROCESSINGS:
        raise ValueError(f"processing must be one of {', '.join(PROCESSINGS)}, got {processing!r}")


def fit_size(size: Size, resolution: int, processing: str) -> Size:
    """(width, height) an image of ``size`` (width, height) is resized to inside the resolution x resolution canvas."""
    check_processing(processing)
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if processing == "square":
        return (resolution, resolution)
    longest = max(width, height)
    # Integer round-half-up of side * resolution / longest: exact for any size, no float ties.
    width, height = ((2 * side * resolution + longest) // (2 * longest) for side in (width, height))
    return (max(1, width), max(1, height))


def content_size_of(size: Size, resolution: int, processing: str) -> ContentSize:
    """(height, width) of the content box in the canvas for an image of ``size`` (width, height)."""
    width, height = fit_size(size, resolution, processing)
    return (height, width)


def pad_to_canvas(array: np.ndarray, side: int) -> np.ndarray:
    """An [h, w] or [h, w, C] array in the top-left corner of a side x side canvas, padded by edge replication."""
    height, width = array.shape[:2]
    if height > side or width > side:
        raise ValueError(f"content {height}x{width} does not fit a {side}x{side} canvas")
    padding = ((0, side - height), (0, side - width)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, padding, mode="edge")


def place_in_canvas(image: Image.Image, side: int) -> Image.Image:
    """A PIL image (RGB or L) in the top-left corner of a side x side canvas (see pad_to_canvas)."""
    if image.size == (side, side):
        return image
    return Image.fromarray(pad_to_canvas(np.asarray(image), side))


def fit_to_canvas(image: Image.Image, side: int, content_size: ContentSize, resample: Image.Resampling) -> Image.Image:
    """The whole image resized to ``content_size`` (h, w) and placed in the side x side canvas. The content size is
    passed, not derived from ``image.size``: a JPEG decoded at draft (reduced) size must fit its full size's box."""
    height, width = content_size
    return place_in_canvas(image.resize((width, height), resample), side)


def valid_mask(content_size: ContentSize, side: int) -> torch.Tensor:
    """float32 [1, side, side]: 1 on the content box (top-left, ``content_size`` (h, w)), 0 on the padding."""
    height, width = content_size
    mask = torch.zeros(1, side, side)
    mask[:, :height, :width] = 1.0
    return mask


def crop_to_content(raws: torch.Tensor | Sequence[torch.Tensor], content_sizes: Sequence[ContentSize]) -> list:
    """Each [..., H, W] prediction cut to its content box [..., :h, :w]: the padding removed before any resize."""
    if len(raws) != len(content_sizes):
        raise ValueError(f"{len(raws)} predictions but {len(content_sizes)} content sizes")
    crops = []
    for raw, (height, width) in zip(raws, content_sizes, strict=True):
        if height > raw.shape[-2] or width > raw.shape[-1]:
            raise ValueError(f"content box {height}x{width} is larger than the prediction {tuple(raw.shape[-2:])}")
        crops.append(raw[..., :height, :width])
    return crops


def mirror_content(batch: torch.Tensor, content_sizes: Sequence[ContentSize]) -> torch.Tensor:
    """[B, C, S, S] or [B, S, S] with each item's content box mirrored left-right and the padding rebuilt by edge
    replication: exactly the canvas of the mirrored image, so its padding stays right and below as in training.
    Applied twice it gives back the content box (the padding may differ: it replicates the content's new edge)."""
    if all(tuple(size) == tuple(batch.shape[-2:]) for size in content_sizes):
        return batch.flip(-1)  # square canvases: the whole batch in one flip
    channels_first = batch if batch.dim() == 4 else batch.unsqueeze(1)
    side_h, side_w = channels_first.shape[-2:]
    mirrored = []
    for item, (height, width) in zip(channels_first, content_sizes, strict=True):
        content = item[None, :, :height, :width].flip(-1)
        mirrored.append(F.pad(content, (0, side_w - width, 0, side_h - height), mode="replicate")[0])
    result = torch.stack(mirrored)
    return result if batch.dim() == 4 else result[:, 0]


def tensor_to_image(pixel_values: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8: the inverse of `image_to_tensor`, for panels."""
    array = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()


def resize_raw(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a [h, w] or [1, h, w] prediction to ``size`` = (H, W); float32 [H, W] clamped to [0, 1].

    align_corners=False matches how images are resized for the model; antialias only when shrinking, where plain
    bilinear would alias thin structures. The clamp removes bilinear/antialias overshoot outside [0, 1].
    """
    image = raw[0] if raw.dim() == 3 and raw.shape[0] == 1 else raw
    if image.dim() != 2:
        raise ValueError(f"raw must be [H, W] or [1, H, W], got shape {tuple(raw.shape)}")
    image = image.detach().float()
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    if tuple(image.shape) == (height, width):
        return image.clamp(0.0, 1.0)
    downsampling = height < image.shape[0] or width < image.shape[1]
    resized = F.interpolate(
        image[None, None], size=(height, width), mode="bilinear", align_corners=False, antialias=downsampling
    )
    return resized[0, 0].clamp(0.0, 1.0)
